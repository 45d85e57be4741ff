"""Watching a demo service from outside: which version answers on a port, and since when.

The demo image serves `demo web <version> (<mode>)` at `/` from the same busybox httpd that
answers its health URL, so one GET tells both that the service answers and which version it
is. Every probe opens a new connection (a swap kills the old one), with a short timeout.
"""

from __future__ import annotations

import http.client
import re
import threading
import time

POLL_SECONDS = 0.01
"""How often the observer probes: figures are good to about this much."""

_VERSION = re.compile(r"demo web (\S+) \(")


def answering_version(port: int, timeout: float = 0.5) -> str | None:
    """The demo version answering GET / on 127.0.0.1:port with a 200, or None."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        body = response.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()
    if response.status != 200:
        return None
    match = _VERSION.search(body)
    return match.group(1) if match else None


def wait_for_version(port: int, version: str, timeout: float = 30.0) -> float:
    """Probe every POLL_SECONDS until `version` answers; the monotonic time it first did."""
    deadline = time.monotonic() + timeout
    while True:
        probed = time.monotonic()
        if answering_version(port) == version:
            return probed
        if probed >= deadline:
            raise TimeoutError(f"version {version} did not answer on port {port} in {timeout:g} s")
        time.sleep(POLL_SECONDS)


class Timeline(threading.Thread):
    """Records, in the background, each change of the version answering on a port."""

    def __init__(self, port: int) -> None:
        super().__init__(name=f"timeline-{port}", daemon=True)
        self.port = port
        self.changes: list[tuple[float, str | None]] = []  # (time.time(), version or None)
        self._stop_event = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        last: str | None = "(unknown)"
        while not self._stop_event.is_set():
            probed = time.time()
            version = answering_version(self.port)
            if version != last:
                with self._lock:
                    self.changes.append((probed, version))
                last = version
            time.sleep(POLL_SECONDS)

    def first_answer(self, version: str, after: float) -> float | None:
        """When `version` first answered at or after wall time `after`."""
        with self._lock:
            for at, seen in self.changes:
                if seen == version and at >= after:
                    return at
        return None

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)
