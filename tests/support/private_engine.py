"""A Docker engine of a test's own, to stop and start again: the shared one is never touched.

`dockerd` runs with the rig's flags (no bridge, no iptables: only host networking, nothing on
a private address) and its own socket, data root, exec root and pid file under one temporary
directory, so it shares nothing with the machine's engine but the binaries. It gets SIGTERM
when the test process dies (a killed run takes it along); a directory a killed run left behind
is removed by the next one.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import docker
import docker.errors
import requests

from tests.support.services import (
    ServiceError,
    ServiceUnavailable,
    _engine_socket_answers,
    _tail,
    dies_with_parent,
)

ROOT_PREFIX = "immune-de-"
"""Every private engine's directory in the temporary directory (its paths stay short: a unix
socket path, containerd's included, is limited to 107 bytes)."""


def _mounts_under(root: Path) -> list[str]:
    """Mount points under `root`, deepest first (dockerd leaves its netns mount behind)."""
    points = []
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            point = line.split()[1].replace("\\040", " ")
            if point == str(root) or point.startswith(f"{root}/"):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def _remove_root(root: Path) -> None:
    for point in _mounts_under(root):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True, timeout=30)
    shutil.rmtree(root, ignore_errors=True)


def _alive(pid_path: Path) -> bool:
    try:
        pid = int(pid_path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return False
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "dockerd"
    except FileNotFoundError:
        return False


def remove_dead_engines(tmp: Path | None = None) -> list[Path]:
    """Directories of private engines whose dockerd is gone (a killed run): removed."""
    removed = []
    for root in Path(tmp or tempfile.gettempdir()).glob(f"{ROOT_PREFIX}*"):
        if root.is_dir() and not _alive(root / "dockerd.pid"):
            _remove_root(root)
            removed.append(root)
    return removed


class PrivateEngine:
    """`dockerd` on its own socket: `.host` (a DOCKER_HOST), `.client`, `.stop()`, `.start()`."""

    program = "dockerd"

    def __init__(self) -> None:
        if shutil.which(self.program) is None:
            raise ServiceUnavailable("dockerd not found on PATH (run scripts/setup.sh)")
        remove_dead_engines()
        self.root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
        self.socket = self.root / "docker.sock"
        self.pid_path = self.root / "dockerd.pid"
        self.log_path = self.root / "dockerd.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._client: docker.DockerClient | None = None

    @property
    def client(self) -> docker.DockerClient:
        """A client of this engine (made at the first use: the SDK asks the engine's version)."""
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.host, timeout=60)
        return self._client

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def arguments(self) -> list[str]:
        return [
            "--bridge=none",
            "--iptables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            f"--host={self.host}",
            f"--data-root={self.root / 'data'}",
            f"--exec-root={self.root / 'x'}",
            f"--pidfile={self.pid_path}",
        ]

    def answers(self) -> bool:
        # A plain connect first: the SDK leaves the socket of a failed connection to the GC.
        if _engine_socket_answers(self.host) is not None:
            return False
        try:
            return bool(self.client.ping())
        except (docker.errors.DockerException, requests.RequestException):
            self._drop_client()  # the SDK leaves a failed connection's socket open
            return False

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def start(self, timeout: float = 60.0) -> float:
        """Start dockerd and wait until it answers; returns how long that took (s)."""
        if self.running:
            return 0.0
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self.program, *self.arguments()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=dies_with_parent(),
            )
        while not self.answers():
            if self._process.poll() is not None:
                code, self._process = self._process.returncode, None
                raise ServiceError(f"dockerd exited with {code}\n" + _tail(self.log_path))
            if time.monotonic() - started > timeout:
                self.stop()
                raise ServiceError(
                    f"dockerd did not answer in {timeout:g}s\n" + _tail(self.log_path)
                )
            time.sleep(0.05)
        return time.monotonic() - started

    def stop(self, timeout: float = 60.0) -> float:
        """SIGTERM, as an operator stops the engine: it finishes the calls under way, stops
        the containers, then exits. Returns how long that took (s)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return 0.0
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)
        return time.monotonic() - started

    def load_images(self, source: docker.DockerClient, references: Iterable[str]) -> None:
        """Copy images from another engine (`docker save | docker load`): nothing is pulled."""
        for reference in references:
            saved = b"".join(source.images.get(reference).save(named=True))
            self.client.images.load(saved)

    def close(self) -> None:
        """Stop, remove every container, and delete the engine's directory."""
        if self.running:
            with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
                for container in self.client.containers.list(all=True):
                    container.remove(force=True)
        self.stop()
        self._drop_client()
        _remove_root(self.root)

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)
