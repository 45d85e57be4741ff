"""A steady, bounded HTTP load on a loopback address that records every response.

Used to prove that a deploy behind the proxy loses nothing: each request is sent on time
(a fixed rate, from a few worker threads with their own keep-alive connection), and its
outcome is kept: the status, the version that answered (the demo's body says
`demo web <version> (<mode>)`), or the connection error.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

_BANNER = re.compile(r"demo web (\S+) \(")
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class Response:
    sent_at: float  # time.monotonic()
    status: int  # 0: no HTTP answer (refused, reset, timed out)
    version: str  # "" when the body named none
    error: str = ""

    @property
    def failed(self) -> bool:
        return self.status == 0 or self.status >= 500


@dataclass
class LoadRecord:
    responses: list[Response] = field(default_factory=list)

    def between(self, start: float, end: float) -> list[Response]:
        return [r for r in self.responses if start <= r.sent_at < end]

    def failures(self, responses: list[Response] | None = None) -> list[Response]:
        return [r for r in (self.responses if responses is None else responses) if r.failed]

    def transport_failures(self) -> list[Response]:
        """No answer, or the proxy's own 502/503/504: what a deploy must never cause."""
        return [r for r in self.responses if r.status == 0 or r.status in (502, 503, 504)]

    def share(self, version: str, responses: list[Response] | None = None) -> float:
        chosen = self.responses if responses is None else responses
        if not chosen:
            return 0.0
        return sum(1 for r in chosen if r.version == version) / len(chosen)

    def by_version(self) -> Counter[str]:
        return Counter(r.version for r in self.responses)

    def summary(self) -> str:
        versions = ", ".join(f"{v or '?'}: {n}" for v, n in sorted(self.by_version().items()))
        return (
            f"{len(self.responses)} requests, {len(self.failures())} failed "
            f"({len(self.transport_failures())} without an answer or 502-504); {versions}"
        )


class SteadyLoad:
    """GET `path` on host:port at `rate` requests/s until stopped or a bound is reached."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        rate: float = 100.0,
        max_seconds: float = 60.0,
        path: str = "/",
        workers: int = 8,
        timeout: float = 2.0,
    ) -> None:
        if host not in LOOPBACK:
            raise ValueError(f"load goes to loopback only, not {host!r}")
        self.host, self.port, self.path = host, port, path
        self.rate, self.max_seconds, self.timeout = rate, max_seconds, timeout
        self.record = LoadRecord()
        self._workers = workers
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._thread: threading.Thread | None = None

    def _connection(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    def _one(self, sent_at: float) -> None:
        connection = self._connection()
        try:
            connection.request("GET", self.path)
            answer = connection.getresponse()
            body = answer.read().decode("utf-8", "replace")
            match = _BANNER.search(body)
            response = Response(sent_at, answer.status, match.group(1) if match else "")
            if answer.getheader("connection", "").lower() == "close":
                connection.close()
                self._local.connection = None
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            self._local.connection = None
            response = Response(sent_at, 0, "", f"{type(exc).__name__}: {exc}")
        with self._lock:
            self.record.responses.append(response)

    def _run(self) -> None:
        interval = 1.0 / self.rate
        started = time.monotonic()
        limit = int(self.rate * self.max_seconds)
        with ThreadPoolExecutor(self._workers, thread_name_prefix="load") as pool:
            for n in range(limit):
                due = started + n * interval
                delay = due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                if self._stop.is_set():
                    break
                pool.submit(self._one, time.monotonic())

    def start(self) -> SteadyLoad:
        self._thread = threading.Thread(target=self._run, name="steady-load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> LoadRecord:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.max_seconds + 10)
        with self._lock:
            self.record.responses.sort(key=lambda r: r.sent_at)
            for connection in self._connections:
                connection.close()
        return self.record


@contextmanager
def steady_load(host: str, port: int, **options: float) -> Iterator[SteadyLoad]:
    load = SteadyLoad(host, port, **options).start()  # type: ignore[arg-type]
    try:
        yield load
    finally:
        load.stop()
