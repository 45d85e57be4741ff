"""The switch probe: which demo version answers through a proxy, request after request, from
a process of its own (`python -m bench.probe`, driven over stdin/stdout, one JSON line a job).

A probe sends GET / from a few keep-alive connections at once (CLIENTS), each one request per
PACE_SECONDS at most (sooner when an answer is slow: the next waits for it), to a loopback address and reads the version from the demo's body (`demo web <version> (<mode>)`,
on a 5xx too). It says `{"probing": true}` once its first answer is back, so the caller acts
only while it watches, then keeps going until, in the order the requests were sent, the last
`consecutive` answers name `version` and no earlier request is still unanswered: the switch
happened between the last other answer's request and the first of that run. Times are `time.time()`,
the same clock in every process of the machine (and the clock the bot's records use).

It runs outside the bench's process so it never waits for the GIL of the bot under test.

Jobs:
    {"op": "probe", "port": P, "version": V, "consecutive": K, "timeout": S,
     "clients": N, "pace": seconds}
    {"op": "quit"}
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import IO

from bench.jobs import JobProcess, JsonDict, serve_jobs
from bench.keepalive import ERRORS, Client

HOST = "127.0.0.1"
CLIENTS = 4
"""Connections probing at once."""
PACE_SECONDS = 0.004
"""Each connection sends at most one request per pace (all: one per pace / CLIENTS), so the
probe's own CPU stays small beside the bot's on a 2-core machine."""
ROOT = Path(__file__).resolve().parent.parent
_BANNER = re.compile(r"demo web (\S+) \(")


def _version(client: Client) -> str | None:
    """The version that answered GET /, or None (no answer, or none named)."""
    try:
        _, body = client.request("GET")
    except ERRORS:
        return None
    match = _BANNER.search(body)
    return match.group(1) if match else None


def _final_run(
    answers: list[tuple[float, str | None]], wanted: str
) -> tuple[int, float | None, float | None]:
    """The trailing run of `wanted` answers in the order the requests were sent: its length,
    when its first request was sent, and when the last other one was."""
    ordered = sorted(answers, key=lambda a: a[0])
    run = 0
    for sent, version in reversed(ordered):
        if version != wanted:
            return run, ordered[len(ordered) - run][0] if run else None, sent
        run += 1
    return run, ordered[0][0] if ordered else None, None


def probe(job: JsonDict, out: IO[str]) -> JsonDict:
    """Probe from `clients` connections at once, so a slow answer (a bad version's CGI) holds
    one client, not the probe's view of the switch."""
    port, wanted = int(job["port"]), str(job["version"])
    consecutive, timeout = int(job.get("consecutive", 10)), float(job.get("timeout", 30.0))
    clients = int(job.get("clients", CLIENTS))
    answers: list[list[tuple[float, str | None]]] = [[] for _ in range(clients)]
    lock = threading.Lock()
    answered = threading.Event()
    stop = threading.Event()

    pace = float(job.get("pace", PACE_SECONDS))

    def client(index: int) -> None:
        connection = Client(f"http://{HOST}:{port}/", timeout=1.0)
        due = time.monotonic() + index * pace / clients  # staggered: one sends every pace/N
        try:
            while not stop.is_set():
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                due = max(due + pace, time.monotonic())
                sent = time.time()
                version = _version(connection)
                with lock:
                    answers[index].append((sent, version))
                answered.set()
        finally:
            connection.close()

    threads = [
        threading.Thread(target=client, args=(i,), name=f"probe-{i}", daemon=True)
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    try:
        if not answered.wait(timeout):
            return {"failed": f"no answer from 127.0.0.1:{port} in {timeout:g} s"}
        with lock:
            first = next(a for mine in answers for a in mine)[1]
        out.write(json.dumps({"probing": True, "first": first}) + "\n")
        out.flush()
        while True:
            time.sleep(0.001)
            with lock:
                everything = [a for mine in answers for a in mine]
                latest = [mine[-1][0] if mine else 0.0 for mine in answers]
            run, run_from, last_other = _final_run(everything, wanted)
            # Done when the run is long enough and every client has an answer sent after the
            # run began: no request sent before it is still on its way.
            if run >= consecutive and run_from is not None and min(latest) >= run_from:
                break
            if time.monotonic() >= deadline:
                return {
                    "failed": f"no {consecutive} answers in a row from {wanted} in {timeout:g} s"
                }
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
    seen = Counter(version or "(none)" for version in (a[1] for a in everything))
    return {
        "switched_at": run_from,
        "last_other_sent_at": last_other,
        "requests": len(everything),
        "clients": clients,
        "seen": dict(seen),
    }


def main() -> None:
    serve_jobs(lambda job: probe(job, sys.stdout))


class ProbeDriver:
    """The bench's side of the probe process: `start()` a probe, act, then `result()`."""

    def __init__(self) -> None:
        self._timeout = 30.0
        self.jobs = JobProcess("bench.probe", "probe", cwd=ROOT)

    def start(
        self, port: int, version: str, *, consecutive: int = 10, timeout: float = 30.0
    ) -> str | None:
        """Probe 127.0.0.1:port until `consecutive` answers in a row name `version`; returns
        once the probe is watching (its first answer is back), with that answer's version."""
        self._timeout = timeout
        self.jobs.send(
            {
                "op": "probe",
                "port": port,
                "version": version,
                "consecutive": consecutive,
                "timeout": timeout,
            }
        )
        first: str | None = self.jobs.answer(10.0).get("first")
        return first

    def result(self) -> JsonDict:
        """`switched_at`: when the first request of the final run was sent (time.time())."""
        return self.jobs.answer(self._timeout + 10.0)

    def close(self) -> None:
        self.jobs.close()


if __name__ == "__main__":
    main()
