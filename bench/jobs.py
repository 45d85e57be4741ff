"""A helper process driven over stdin/stdout, one JSON job per line and one JSON answer per
job: the load generator (`bench.load`) and the probe (`bench.probe`) run in processes of
their own so they never compete with the measured server for its GIL."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from tests.support.services import dies_with_parent

JsonDict = dict[str, Any]


def serve_jobs(run: Callable[[JsonDict], JsonDict]) -> None:
    """The helper's side: answer each job until `{"op": "quit"}` or the end of stdin."""
    for line in sys.stdin:
        job = json.loads(line)
        if job["op"] == "quit":
            break
        try:
            result = run(job)
        except Exception as exc:  # reported to the driver, which raises it there
            result = {"failed": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


class JobProcess:
    """The bench's side: start `python -m <module>`, send jobs, read their answers."""

    def __init__(self, module: str, what: str, cwd: Path | None = None) -> None:
        self.what = what
        self.process = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=dies_with_parent(),
        )

    def send(self, job: JsonDict) -> None:
        stdin: IO[str] | None = self.process.stdin
        assert stdin is not None
        stdin.write(json.dumps(job) + "\n")
        stdin.flush()

    def answer(self, timeout: float) -> JsonDict:
        """The next answer line; a job the helper reports failed is raised here."""
        stdout: IO[str] | None = self.process.stdout
        assert stdout is not None
        got: list[str] = []
        reader = threading.Thread(target=lambda: got.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not got or not got[0]:
            self.close()
            raise RuntimeError(f"the {self.what} process gave no answer within {timeout:g} s")
        answer: JsonDict = json.loads(got[0])
        if "failed" in answer:
            raise RuntimeError(f"{self.what} job failed: {answer['failed']}")
        return answer

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.send({"op": "quit"})
                assert self.process.stdin is not None
                self.process.stdin.close()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
