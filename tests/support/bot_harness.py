"""Running the real bot for tests, demos and benchmarks: in-process, or as `python -m bot`.

In-process bots use the production factory and HTTP server on a free loopback port; process
bots are started exactly as users start them, so they can be killed and started again.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from bot.app import Immune, build
from bot.domain.clock import Clock
from bot.domain.config import PipelinesConfig
from bot.plugins import parse_pipelines
from bot.settings import Settings
from tests.support.services import dies_with_parent
from tests.support.skewed_bot import SKEW_ENV
from tests.support.slack_client import SignedSlackClient
from tests.support.slack_emulator import SlackEmulator

REPO_ROOT = Path(__file__).resolve().parents[2]
SIGNING_SECRET = "test-signing-secret"
BOT_TOKEN = "xoxb-test"
CHANNEL = "C0DEPLOY"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def docker_pipeline(
    *,
    image: str,
    container_name: str,
    port: int,
    channel: str = CHANNEL,
    **extra: Any,
) -> dict[str, Any]:
    """A `target: docker` pipeline running the demo image with host networking on `port`."""
    pipeline: dict[str, Any] = {
        "channel": channel,
        "target": "docker",
        "image": image,
        "container": {
            "name": container_name,
            "network_mode": "host",
            "environment": {"PORT": str(port)},
        },
        "health": {
            "url": f"http://127.0.0.1:{port}/healthz",
            "timeout": "10s",
            "interval": "100ms",
        },
    }
    pipeline.update(extra)
    return pipeline


def bot_settings(
    *,
    redis_url: str,
    emulator: SlackEmulator,
    pipelines_file: Path,
    prometheus_url: str = "http://127.0.0.1:9",
    prefix: str | None = None,
    port: int = 0,
    **overrides: Any,
) -> dict[str, str]:
    """Environment variables for a bot (the same names users set)."""
    env = {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": emulator.base_url,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": prefix or f"immune-test-{secrets.token_hex(3)}",
        "PROMETHEUS_URL": prometheus_url,
        "PIPELINES_FILE": str(pipelines_file),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_LEVEL": "INFO",
        "LOCK_TTL_SECONDS": "3",
    }
    env.update({key.upper(): str(value) for key, value in overrides.items()})
    return env


def write_pipelines(path: Path, config: dict[str, Any]) -> PipelinesConfig:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return parse_pipelines(config, source=str(path))


@dataclass
class InProcessBot:
    """The production app and server, in this process (fast to start, easy to inspect)."""

    env: dict[str, str]
    emulator: SlackEmulator
    clock: Clock | None = None
    immune: Immune = field(init=False)
    server: Any = field(init=False)

    def __post_init__(self) -> None:
        from bot.server import HttpServer

        settings = Settings(_env_file=None, **{k.lower(): v for k, v in self.env.items()})  # type: ignore[call-arg]
        self.immune = build(settings, clock=self.clock)
        self.server = HttpServer(self.immune, "127.0.0.1", 0, threads=settings.http_threads)
        self.immune.start()
        self.server.start_in_thread()
        self.slack = SignedSlackClient(self.url, SIGNING_SECRET, emulator=self.emulator)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def ctx(self) -> Any:
        return self.immune.ctx

    def stop(self) -> None:
        self.server.close()
        self.immune.stop(wait=True)


class BotProcess:
    """`python -m bot` in a subprocess, killable with SIGKILL like a crashed host."""

    def __init__(
        self,
        env: dict[str, str],
        emulator: SlackEmulator,
        log_path: Path,
        *,
        clock_offset: float | None = None,
    ) -> None:
        self.env = dict(env)
        # The production bot, or the same one run by skewed_bot with its clock shifted.
        self.module = "bot" if clock_offset is None else "tests.support.skewed_bot"
        if clock_offset is not None:
            self.env[SKEW_ENV] = repr(clock_offset)
        if self.env.get("PORT", "0") == "0":
            self.env["PORT"] = str(free_port())
        self.emulator = emulator
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.slack = SignedSlackClient(self.url, SIGNING_SECRET, emulator=emulator)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['PORT']}"

    def start(self, timeout: float = 20.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "REDIS_"))}
        env.update(self.env)
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=dies_with_parent(),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bot exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"bot did not answer /healthz in {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, like a host that lost power."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def wait_until(
    predicate: Any, timeout: float = 20.0, interval: float = 0.1, what: str = "condition"
) -> Any:
    """Poll `predicate` until it returns something truthy; AssertionError naming `what` if not."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
