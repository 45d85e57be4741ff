"""Real services for the tests: Redis, Prometheus, HAProxy and the Docker engine, on 127.0.0.1.

Each server runs from this machine's own binaries on a free port with its files in a temporary
directory, and dies with the test process. Docker objects made by tests carry names and labels
that tie them to the pytest session that made them (`PytestRun`), so a later session can remove
what a killed one left behind without touching those of sessions still running.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import gc
import gzip
import hashlib
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import docker
import docker.errors
import requests
from docker import DockerClient

from bot.domain.config import Traffic
from bot.ports import TrafficError
from bot.traffic.haproxy import RuntimeApi
from bot.traffic.haproxy_config import render

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_DEMO_IMAGE = REPO_ROOT / "scripts" / "build-demo-image.sh"

NAME_PREFIX = "immune-t-"
"""Every container, service or pipeline name a test makes (`PytestRun.new_name`)."""
IMAGE_PREFIX = "immune-test-"
"""Every image repository a test session builds: `immune-test-<run id>/web`."""
TEST_RUN_LABEL = "immune.test-run"
PIPELINE_LABEL = "immune.pipeline"

DEMO_TAGS: Mapping[str, tuple[str, str]] = {
    "1": ("ok", "pass"),
    "2": ("ok", "pass"),
    "3": ("errors", "pass"),
    "4": ("unhealthy", "pass"),
    "5": ("crash", "pass"),
    "6": ("ok", "fail"),
}
"""The demo images every session builds: tag -> (mode, tests)."""

RUNS_DIR = Path(tempfile.gettempdir()) / "immune-test-runs"


class ServiceUnavailable(Exception):
    """A program or engine a fixture needs is not on this machine: skip, or fail in CI."""


class ServiceError(RuntimeError):
    """A service failed to start or to answer; the message ends with its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(
    url: str, status: int = 200, timeout: float = 10.0, interval: float = 0.02
) -> requests.Response:
    """GET `url` (following redirects) until it answers `status`; AssertionError if it does not."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            response = requests.get(url, timeout=1)
        except requests.RequestException as error:
            last = f"{type(error).__name__}: {error}"
        else:
            if response.status_code == status:
                return response
            last = f"HTTP {response.status_code}: {response.text[:200]!r}"
        if time.monotonic() >= deadline:
            raise AssertionError(f"GET {url} did not answer {status} within {timeout:g} s: {last}")
        time.sleep(interval)


def die_with_parent() -> None:
    """Run in a child before exec: it gets SIGTERM when its parent dies (a killed pytest or
    bench takes its servers and bots with it)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def dies_with_parent() -> Callable[[], None] | None:
    """`preexec_fn` for a child that must not outlive this process, or None where it can't.

    The signal follows the thread that forked: only the main thread lives as long as we do.
    """
    if sys.platform == "linux" and threading.current_thread() is threading.main_thread():
        return die_with_parent
    return None


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return f"(no log at {path})"
    return f"--- last lines of {path}:\n" + "\n".join(text)


class ServerProcess:
    """A server started from a binary on this machine, on a fixed loopback port."""

    program = ""
    startup_timeout = 30.0

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port if port is not None else free_port()
        self.log_path = workdir / f"{self.program}.log"
        self._process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def arguments(self) -> list[str]:
        """The program's command-line arguments."""
        raise NotImplementedError

    def answers(self) -> bool:
        """The server answers its readiness check."""
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process else None

    def start(self) -> None:
        """Start on `self.port` and wait until ready (a no-op while it runs)."""
        if self.running:
            return
        binary = shutil.which(self.program)
        if binary is None:
            raise ServiceUnavailable(f"{self.program} not found on PATH (run scripts/setup.sh)")
        with self.log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} starting on port {self.port}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                [binary, *self.arguments()],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=dies_with_parent(),
            )
        deadline = time.monotonic() + self.startup_timeout
        while not self.answers():
            code = self._process.poll()
            if code is not None:
                self._process = None
                raise ServiceError(
                    f"{self.program} on port {self.port} exited with code {code} while starting\n"
                    + _tail(self.log_path)
                )
            if time.monotonic() >= deadline:
                self.stop()
                raise ServiceError(
                    f"{self.program} on port {self.port} not ready within "
                    f"{self.startup_timeout:g} s\n" + _tail(self.log_path)
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, and SIGKILL if it is still there after `timeout`."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: no shutdown work, like a crash."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(15)

    def restart(self) -> None:
        self.stop()
        self.start()

    def ensure_running(self) -> None:
        if not self.running:
            self.start()

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            # -LOADING while it reads its append-only file back
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(ServerProcess):
    """`redis-server` on 127.0.0.1; `persistent` keeps data across restarts (append-only file)."""

    program = "redis-server"
    startup_timeout = 15.0

    def __init__(self, workdir: Path, port: int | None = None, persistent: bool = False) -> None:
        super().__init__(workdir, port)
        self.persistent = persistent

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def arguments(self) -> list[str]:
        durability = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persistent
            else ["--appendonly", "no"]
        )
        return [
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            *durability,
            "--dir", str(self.workdir),
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip

    def answers(self) -> bool:
        return _redis_ping(self.port)


class PrometheusServer(ServerProcess):
    """Prometheus on 127.0.0.1: scrape and evaluation every 1 s, job `web` from file_sd files."""

    program = "prometheus"
    startup_timeout = 30.0
    job = "web"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        super().__init__(workdir, port)
        self.config_path = workdir / "prometheus.yml"
        self.targets_dir = workdir / "targets"
        self.targets_dir.mkdir(exist_ok=True)
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "scrape_configs": [
                {
                    "job_name": self.job,
                    "file_sd_configs": [
                        {"files": [str(self.targets_dir / "*.json")], "refresh_interval": "1s"}
                    ],
                }
            ],
        }
        # JSON is YAML, and needs no YAML writer.
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arguments(self) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]

    def answers(self) -> bool:
        try:
            return requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def set_targets(
        self, job_labels: Mapping[str, str], targets: Iterable[str], name: str = "web"
    ) -> None:
        """Scrape `targets` ("127.0.0.1:PORT") with `job_labels` added to their series.

        Each `name` is one file_sd file: setting a name again replaces its targets. Prometheus
        reads the files within about a second and scrapes every second.
        """
        group = [{"targets": list(targets), "labels": dict(job_labels)}]
        path = self.targets_dir / f"{name}.json"
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(group))
        os.replace(partial, path)  # Prometheus never reads half a file

    def clear_targets(self) -> None:
        for path in self.targets_dir.glob("*.json"):
            path.unlink(missing_ok=True)

    def query(self, promql: str) -> dict[str, Any]:
        """An instant query: the parsed JSON answer (`["data"]["result"]` holds the series)."""
        response = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        answer: dict[str, Any] = response.json()
        if response.status_code != 200 or answer.get("status") != "success":
            raise ServiceError(f"query {promql!r} failed: HTTP {response.status_code} {answer}")
        return answer

    def active_targets(self) -> list[dict[str, Any]]:
        response = requests.get(f"{self.url}/api/v1/targets", timeout=10)
        targets: list[dict[str, Any]] = response.json()["data"]["activeTargets"]
        return targets

    def wait_for_series(
        self,
        promql: str,
        timeout: float = 15.0,
        predicate: Callable[[list[dict[str, Any]]], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """Query until the result is not empty (and `predicate(result)` holds); return it.

        AssertionError on timeout, with the last result and the targets' scrape health.
        """
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while True:
            result = self.query(promql)["data"]["result"]
            if result and (predicate is None or predicate(result)):
                return result
            if time.monotonic() >= deadline:
                health = [
                    (t["scrapeUrl"], t["health"], t["lastError"]) for t in self.active_targets()
                ]
                raise AssertionError(
                    f"{promql!r}: no matching series within {timeout:g} s; last result {result}; "
                    f"targets {health}"
                )
            time.sleep(0.25)


class RegistryServer(ServerProcess):
    """Debian's `docker-registry` (the CNCF distribution registry) on 127.0.0.1, its storage
    in `workdir`; with `user` and `password` it asks for them (htpasswd, bcrypt) and answers
    401 without. The engine treats a loopback registry as insecure-allowed: plain HTTP."""

    program = "docker-registry"
    startup_timeout = 15.0

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        super().__init__(workdir, port)
        self.user, self.password = user, password
        self.config_path = workdir / "config.yml"
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn"},
            "storage": {
                "filesystem": {"rootdirectory": str(workdir / "data")},
                "delete": {"enabled": True},
            },
            "http": {"addr": f"127.0.0.1:{self.port}"},
        }
        if user is not None and password is not None:
            htpasswd = workdir / "htpasswd"
            if shutil.which("htpasswd") is None:
                raise ServiceUnavailable("htpasswd not found (apache2-utils): run scripts/setup.sh")
            subprocess.run(
                ["htpasswd", "-Bbc", str(htpasswd), user, password],
                check=True,
                capture_output=True,
            )
            config["auth"] = {"htpasswd": {"realm": "immune-test", "path": str(htpasswd)}}
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")

    @property
    def host(self) -> str:
        """What image names start with: `127.0.0.1:<port>`."""
        return f"127.0.0.1:{self.port}"

    @property
    def auth_config(self) -> dict[str, str] | None:
        if self.user is None or self.password is None:
            return None
        return {"username": self.user, "password": self.password}

    def arguments(self) -> list[str]:
        return ["serve", str(self.config_path)]

    def answers(self) -> bool:
        try:
            response = requests.get(f"http://{self.host}/v2/", timeout=1)
        except requests.RequestException:
            return False
        return response.status_code in (200, 401)

    def write_docker_config(self, directory: Path) -> Path:
        """A `config.json` holding this registry's credentials, as `docker login` writes it;
        point DOCKER_CONFIG at `directory`."""
        assert self.user is not None and self.password is not None
        directory.mkdir(parents=True, exist_ok=True)
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        path = directory / "config.json"
        path.write_text(json.dumps({"auths": {self.host: {"auth": token}}}))
        return path

    def push(
        self, client: DockerClient, source: str, repository: str, tag: str, host: str = ""
    ) -> str:
        """Tag the local image `source` as `<host>/<repository>:<tag>`, push it, and return
        the manifest digest the registry now serves for that tag (`host`: another address
        that reaches this registry, such as a proxy's)."""
        host = host or self.host
        name = f"{host}/{repository}"
        client.api.tag(source, name, tag)
        errors = [
            line["error"]
            for line in client.api.push(
                name, tag=tag, stream=True, decode=True, auth_config=self.auth_config
            )
            if "error" in line
        ]
        if errors:
            raise ServiceError(f"pushing {name}:{tag} failed: {errors}")
        response = requests.head(
            f"http://{host}/v2/{repository}/manifests/{tag}",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
            auth=(self.user, self.password) if self.user and self.password else None,
            timeout=5,
        )
        response.raise_for_status()
        return str(response.headers["Docker-Content-Digest"])

    def push_foreign_platform(self, repository: str, tag: str, architecture: str) -> str:
        """Push, through the registry's HTTP API, a one-layer image built for another
        `architecture` (nothing this engine can run); returns its manifest digest."""
        auth = (self.user, self.password) if self.user and self.password else None
        base = f"http://{self.host}/v2/{repository}"
        layer_tar = io.BytesIO()
        with tarfile.open(fileobj=layer_tar, mode="w") as archive:
            info = tarfile.TarInfo("hello.txt")
            info.size = 6
            archive.addfile(info, io.BytesIO(b"hello\n"))
        diff_id = "sha256:" + hashlib.sha256(layer_tar.getvalue()).hexdigest()
        layer = gzip.compress(layer_tar.getvalue(), mtime=0)
        config = json.dumps(
            {
                "architecture": architecture,
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            }
        ).encode()

        def upload(blob: bytes) -> str:
            digest = "sha256:" + hashlib.sha256(blob).hexdigest()
            started = requests.post(f"{base}/blobs/uploads/", auth=auth, timeout=5)
            started.raise_for_status()
            location = started.headers["Location"]
            if location.startswith("/"):
                location = f"http://{self.host}{location}"
            joiner = "&" if "?" in location else "?"
            done = requests.put(
                f"{location}{joiner}digest={digest}",
                data=blob,
                headers={"Content-Type": "application/octet-stream"},
                auth=auth,
                timeout=5,
            )
            done.raise_for_status()
            return digest

        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {
                    "mediaType": "application/vnd.docker.container.image.v1+json",
                    "size": len(config),
                    "digest": upload(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                        "size": len(layer),
                        "digest": upload(layer),
                    }
                ],
            }
        ).encode()
        put = requests.put(
            f"{base}/manifests/{tag}",
            data=manifest,
            headers={"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"},
            auth=auth,
            timeout=5,
        )
        put.raise_for_status()
        return str(put.headers["Docker-Content-Digest"])


def free_port_range(
    count: int, low: int = 20000, high: int = 32000, avoid: Collection[int] = ()
) -> int:
    """The first of `count` consecutive TCP ports on 127.0.0.1 that were free a moment ago,
    none of them in `avoid` (ports already handed out but not yet bound, such as another
    pipeline's range in the same config).

    By default below Linux's ephemeral range (32768-60999), where outgoing connections and
    `free_port()` take ports: a range drawn there could hold a port `free_port()` hands out
    next (a pipeline's `traffic.listen`, which may not sit among its versions' ports)."""
    rng = secrets.SystemRandom()
    for _ in range(200):
        first = rng.randrange(low, high - count)
        if any(port in avoid for port in range(first, first + count)):
            continue
        sockets: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return first
    raise ServiceError(f"no {count} consecutive free ports on 127.0.0.1 in {low}-{high}")


class HAProxyServer(ServerProcess):
    """HAProxy on 127.0.0.1, run with the config `python -m bot proxy-config` prints.

    Its runtime API is a unix socket (`.runtime_api`) in a short temporary directory of its own
    (socket paths are limited to 107 bytes); `.port` is its Prometheus exporter. Make the
    pipelines' traffic blocks with `.traffic_block()`, then `.serve({name: block})` writes the
    config and starts it; `.restart()` (stop, start) loses what the runtime API changed.
    """

    program = "haproxy"
    startup_timeout = 10.0

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        super().__init__(workdir, port)
        self.config_path = workdir / "haproxy.cfg"
        self.pid_path = workdir / "haproxy.pid"
        self._socket_dir = Path(tempfile.mkdtemp(prefix="immune-hx-"))
        self.runtime_api = str(self._socket_dir / "api.sock")
        self.traffics: dict[str, Traffic] = {}
        self._handed_out: set[int] = set()  # ports traffic_block gave, to give none twice

    @property
    def exporter(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.exporter}/metrics"

    def traffic_block(self, backend: str = "web", ports: int = 4, **extra: Any) -> dict[str, Any]:
        """A pipelines-file `traffic:` block for this HAProxy: its runtime API, a free listen
        port and `ports` free consecutive ports for the versions."""
        # Free is not enough: the blocks of one config are drawn before anything binds their
        # ports, so each must also miss what the earlier blocks were given.
        first = free_port_range(ports, avoid=self._handed_out)
        listen = free_port()
        while listen in self._handed_out:
            listen = free_port()
        self._handed_out.update(range(first, first + ports))
        self._handed_out.add(listen)
        return {
            "listen": f"127.0.0.1:{listen}",
            "runtime_api": self.runtime_api,
            "backend": backend,
            "ports": f"{first}-{first + ports - 1}",
            **extra,
        }

    def serve(self, blocks: Mapping[str, Mapping[str, Any] | Traffic]) -> dict[str, Traffic]:
        """Write the config for these pipelines (name -> traffic block) and (re)start."""
        self.traffics = {
            name: block if isinstance(block, Traffic) else Traffic.model_validate(dict(block))
            for name, block in blocks.items()
        }
        self.config_path.write_text(render(self.traffics, exporter=self.exporter))
        self.restart()
        return self.traffics

    def arguments(self) -> list[str]:
        # -db: in the foreground, so it is our child and dies with us.
        return ["-db", "-f", str(self.config_path)]

    def start(self) -> None:
        if not self.config_path.exists():
            raise ServiceError("HAProxyServer: call serve() first: it has no config yet")
        _kill_leftover(self.pid_path, self.program)
        super().start()
        if self.pid is not None:
            self.pid_path.write_text(f"{self.pid}\n")

    def stop(self, timeout: float = 15.0) -> None:
        super().stop(timeout)
        self.pid_path.unlink(missing_ok=True)

    def kill(self) -> None:
        super().kill()
        self.pid_path.unlink(missing_ok=True)

    def answers(self) -> bool:
        where = next(iter(self.traffics.values())).runtime_api if self.traffics else ""
        try:
            return "Name: HAProxy" in RuntimeApi(where, timeout=0.5).ask("show info")
        except TrafficError:
            return False

    def check_config(self, path: Path | None = None) -> subprocess.CompletedProcess[str]:
        """`haproxy -c -f <config>`: exit code 0 and "Configuration file is valid" if valid."""
        binary = shutil.which(self.program)
        if binary is None:
            raise ServiceUnavailable("haproxy not found on PATH (run scripts/setup.sh)")
        return subprocess.run(
            [binary, "-c", "-f", str(path or self.config_path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def metrics(self) -> str:
        response = requests.get(self.metrics_url, timeout=5)
        response.raise_for_status()
        return response.text

    def close(self) -> None:
        """Stop, and remove the socket's directory."""
        self.stop()
        shutil.rmtree(self._socket_dir, ignore_errors=True)


def _kill_leftover(pid_path: Path, program: str) -> None:
    """A server a killed session left running from this pid file (only if it is `program`)."""
    try:
        pid = int(pid_path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    try:
        if Path(f"/proc/{pid}/comm").read_text().strip() == program:
            os.kill(pid, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    pid_path.unlink(missing_ok=True)


def sample_value(series: Mapping[str, Any]) -> float:
    """The value of one series of an instant vector."""
    return float(series["value"][1])


class PytestRun:
    """This pytest session: an id, held in a locked file while the session lives.

    Other sessions (a parallel run, an xdist worker) see the lock and leave this session's
    containers and images alone; once the process is gone the lock goes with it.
    """

    __test__ = False

    def __init__(self, runs_dir: Path = RUNS_DIR) -> None:
        self.id = secrets.token_hex(4)
        self.runs_dir = runs_dir
        runs_dir.mkdir(parents=True, exist_ok=True)
        # Locked before it gets its name, so no other session ever sees it unlocked.
        fd, partial = tempfile.mkstemp(dir=runs_dir, prefix=".run-")
        self._lock: IO[str] | None = os.fdopen(fd, "w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self._lock.write(f"{os.getpid()}\n")
        self._lock.flush()
        os.replace(partial, self.lock_path)

    @property
    def lock_path(self) -> Path:
        return self.runs_dir / f"{self.id}.lock"

    @property
    def names_path(self) -> Path:
        return self.runs_dir / f"{self.id}.names"

    @property
    def labels(self) -> dict[str, str]:
        """Labels for every container a test creates directly."""
        return {TEST_RUN_LABEL: self.id}

    @property
    def image_repo(self) -> str:
        return f"{IMAGE_PREFIX}{self.id}/web"

    def new_name(self) -> str:
        """A short name no other test uses (containers, services, pipelines): immune-t-<6 hex>."""
        name = f"{NAME_PREFIX}{secrets.token_hex(3)}"
        with self.names_path.open("a") as names:
            names.write(name + "\n")
        return name

    def close(self) -> None:
        if self._lock is None:
            return
        self.lock_path.unlink(missing_ok=True)
        self.names_path.unlink(missing_ok=True)
        self._lock.close()
        self._lock = None


def live_runs(runs_dir: Path = RUNS_DIR) -> dict[str, set[str]]:
    """The sessions still running (this one included): run id -> the names they handed out.

    Files of dead sessions are removed on the way.
    """
    live: dict[str, set[str]] = {}
    for lock_path in runs_dir.glob("*.lock"):
        run_id = lock_path.stem
        try:
            lock = lock_path.open("r")
        except FileNotFoundError:
            continue
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                names_path = runs_dir / f"{run_id}.names"
                try:
                    live[run_id] = set(names_path.read_text().split())
                except FileNotFoundError:
                    live[run_id] = set()
                continue
            lock_path.unlink(missing_ok=True)
            (runs_dir / f"{run_id}.names").unlink(missing_ok=True)
    return live


def _engine_socket_answers(docker_host: str) -> str | None:
    """Why the engine's socket cannot be reached, or None if it accepts a connection."""
    address: str | tuple[str, int]
    if docker_host.startswith("unix://"):
        family, address = socket.AF_UNIX, docker_host[len("unix://") :]
    elif docker_host.startswith("tcp://"):
        host, _, port = docker_host[len("tcp://") :].rstrip("/").rpartition(":")
        family, address = socket.AF_INET, (host or "127.0.0.1", int(port or 2375))
    else:
        return None  # ssh:// and others: left to the docker SDK
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(address)
    except OSError as error:
        return f"cannot connect to {docker_host}: {error}"
    return None


def connect_docker() -> DockerClient:
    """A client for the engine `DOCKER_HOST` names; ServiceUnavailable when it does not answer."""
    docker_host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    hint = "start it: scripts/services.sh start-docker"
    reason = _engine_socket_answers(docker_host)
    if reason is not None:
        raise ServiceUnavailable(f"Docker engine unreachable ({reason}); {hint}")
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except (docker.errors.DockerException, requests.RequestException) as error:
        # The SDK leaves the socket of a failed connection open: collect it quietly here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        raise ServiceUnavailable(f"Docker engine unreachable ({error}); {hint}") from error
    return client


SWARM_SERVICE_LABEL = "com.docker.swarm.service.name"


def _named_after(name: str, test_name: str) -> bool:
    """`name` is `test_name` or made from it: `…--1.4.1` (kept), `…-gate`, `….1` (a task)."""
    return name == test_name or (name.startswith(test_name) and name[len(test_name)] in "-._")


def _test_owner(name: str, labels: Mapping[str, str]) -> str | None:
    """The test name that ties a Docker object to a test (None if nothing does)."""
    for candidate in (labels.get(PIPELINE_LABEL, ""), labels.get(SWARM_SERVICE_LABEL, ""), name):
        if candidate.startswith(NAME_PREFIX):
            return candidate
    return None


def _matches_name(name: str, labels: Mapping[str, str], test_name: str) -> bool:
    return any(
        _named_after(candidate, test_name)
        for candidate in (name, labels.get(PIPELINE_LABEL, ""), labels.get(SWARM_SERVICE_LABEL, ""))
    )


def _containers(client: DockerClient) -> Iterator[tuple[str, str, Mapping[str, str]]]:
    """(id, name, labels) of every container, from one list call (no inspect races)."""
    for info in client.api.containers(all=True):
        name = info["Names"][0].lstrip("/") if info.get("Names") else ""
        yield info["Id"], name, info.get("Labels") or {}


def _remove_container(client: DockerClient, container_id: str) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        try:
            client.api.remove_container(container_id, force=True, v=True)
        except docker.errors.APIError as error:
            if error.status_code != 409:  # already being removed
                raise


def _swarm_services(client: DockerClient) -> list[dict[str, Any]]:
    try:
        services: list[dict[str, Any]] = client.api.services()
    except docker.errors.APIError:
        return []  # not a swarm manager
    return services


def remove_test_objects(client: DockerClient, test_name: str) -> list[str]:
    """Remove the swarm services and containers of one test: named after it or its pipeline."""
    removed = []
    for service in _swarm_services(client):
        spec = service["Spec"]
        if _matches_name(spec["Name"], spec.get("Labels") or {}, test_name):
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_service(service["ID"])
            removed.append(f"service {spec['Name']}")
    for container_id, name, labels in _containers(client):
        if _matches_name(name, labels, test_name):
            _remove_container(client, container_id)
            removed.append(f"container {name}")
    return removed


def remove_run_containers(client: DockerClient, run_id: str) -> list[str]:
    """Remove every container labelled with this run (those from its demo images included)."""
    removed = []
    for container_id, name, labels in _containers(client):
        if labels.get(TEST_RUN_LABEL) == run_id:
            _remove_container(client, container_id)
            removed.append(f"container {name}")
    return removed


def remove_leftovers(client: DockerClient) -> list[str]:
    """Remove what test sessions that are no longer running left in the engine.

    Swarm services and containers labelled `immune.test-run` (as every container from the
    session's demo images is), or named `immune-t-…` (or with such an `immune.pipeline`), and
    images `immune-test-<run>/…`, unless a live session owns them. Returns what it removed.
    """
    live = live_runs()
    live_names = set().union(*live.values()) if live else set()

    def is_leftover(name: str, labels: Mapping[str, str]) -> bool:
        if TEST_RUN_LABEL in labels:
            return labels[TEST_RUN_LABEL] not in live
        owner = _test_owner(name, labels)
        if owner is None:
            return False
        return not any(_named_after(owner, live_name) for live_name in live_names)

    removed = []
    for service in _swarm_services(client):
        spec = service["Spec"]
        if is_leftover(spec["Name"], spec.get("Labels") or {}):
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_service(service["ID"])
            removed.append(f"service {spec['Name']}")
    for container_id, name, labels in _containers(client):
        if is_leftover(name, labels):
            _remove_container(client, container_id)
            removed.append(f"container {name}")
    for image in client.api.images():
        # A pulled-by-digest image has no tag, only `repo@sha256:…` names.
        for tag in [*(image.get("RepoTags") or []), *(image.get("RepoDigests") or [])]:
            # Pushed to a test registry: `127.0.0.1:<port>/immune-test-<run>/…`.
            repository = tag.split("/", 1)[1] if tag.startswith("127.0.0.1:") else tag
            if not repository.startswith(IMAGE_PREFIX):
                continue
            run_id = repository[len(IMAGE_PREFIX) :].split("/", 1)[0]
            if run_id not in live:
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    client.api.remove_image(tag, force=True)
                    removed.append(f"image {tag}")
    return removed


@dataclass(frozen=True)
class DemoImages:
    """The demo images of this session: `ref("3")` is `immune-test-<run>/web:3`."""

    repo: str
    tags: Mapping[str, tuple[str, str]]

    def ref(self, tag: str | int) -> str:
        tag = str(tag)
        if tag not in self.tags:
            raise KeyError(f"no demo image tag {tag!r}: built {sorted(self.tags)}")
        return f"{self.repo}:{tag}"

    def mode(self, tag: str | int) -> str:
        return self.tags[str(tag)][0]


def build_demo_images(
    repo: str,
    tags: Mapping[str, tuple[str, str]] = DEMO_TAGS,
    labels: Mapping[str, str] | None = None,
) -> DemoImages:
    """Build the demo image under `repo` for each tag with scripts/build-demo-image.sh."""
    if shutil.which("docker") is None:
        raise ServiceUnavailable("docker (the command) not found on PATH: run scripts/setup.sh")
    if not Path(os.environ.get("BUSYBOX", "/bin/busybox")).exists():
        raise ServiceUnavailable(
            "/bin/busybox not found: install busybox-static (scripts/setup.sh)"
        )
    label_args = [
        arg for key, value in (labels or {}).items() for arg in ("--label", f"{key}={value}")
    ]
    specs = [f"{tag}:{mode}:{tests}" for tag, (mode, tests) in tags.items()]
    result = subprocess.run(
        [str(BUILD_DEMO_IMAGE), *label_args, repo, *specs],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise ServiceError(
            f"building the demo images failed (exit {result.returncode}):\n"
            f"{result.stdout}{result.stderr}"
        )
    return DemoImages(repo=repo, tags=dict(tags))


def remove_images(client: DockerClient, images: DemoImages) -> None:
    for tag in images.tags:
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_image(images.ref(tag), force=True)


def run_demo_container(
    client: DockerClient,
    image: str,
    name: str,
    port: int,
    labels: Mapping[str, str] | None = None,
    **options: Any,
) -> Any:
    """Start a demo container with host networking, its httpd on 127.0.0.1:`port`."""
    environment = {"PORT": str(port), **options.pop("environment", {})}
    return client.containers.run(
        image,
        name=name,
        detach=True,
        network_mode="host",
        environment=environment,
        labels=dict(labels or {}),
        **options,
    )
