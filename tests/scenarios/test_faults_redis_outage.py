"""Redis stops answering in the middle of a swap (issue 15, item 3).

The bot runs in this process on a Redis of the test's own with an append-only file (fsync
always), so stopping it (SIGTERM) and starting it again keeps what it had. The new version's
health check goes to a loopback gate the test holds shut: Redis is stopped while the rollout
waits on it, then the gate opens, so the swap on the real engine ends while Redis is away.
Redis is away longer than the rollout lock's TTL (3 s here), so the lock has expired when it
comes back: the rollout takes it back before writing anything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import pytest

from bot.domain.models import Rollout, RolloutStatus, StepStatus
from bot.store.store import Store
from tests.scenarios.test_deploy_loop import containers_of, deploy, finished, serving_version
from tests.support.bot_harness import (
    CHANNEL,
    InProcessBot,
    bot_settings,
    wait_until,
    write_pipelines,
)
from tests.support.services import RedisServer
from tests.support.slack_emulator import SlackEmulator

pytestmark = [pytest.mark.docker, pytest.mark.slow]

OUTAGE_SECONDS = 4.5  # longer than the lock's TTL (LOCK_TTL_SECONDS=3 in bot_settings)


class HealthGate:
    """A loopback /healthz that answers 503 until `open()`, then 200."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status = 200 if gate.opened.is_set() else 503
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/healthz"

    def open(self) -> None:
        self.opened.set()

    def shut(self) -> None:
        self.opened.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gate() -> Iterator[HealthGate]:
    health = HealthGate()
    try:
        yield health
    finally:
        health.close()


def start(
    tmp_path: Path,
    redis_server: RedisServer,
    emulator: SlackEmulator,
    web: dict[str, Any],
    **settings: Any,
) -> InProcessBot:
    path = tmp_path / "pipelines.yml"
    write_pipelines(path, {"pipelines": {"web": web}})
    env = bot_settings(
        redis_url=redis_server.url, emulator=emulator, pipelines_file=path, **settings
    )
    return InProcessBot(env, emulator)


def in_health_check(store: Store, rollout_id: str) -> bool:
    rollout = store.rollout(rollout_id)
    return rollout is not None and any(
        step.name == "health check" and step.ended_at is None for step in rollout.steps
    )


def rollout_calls(emulator: SlackEmulator, since: float, until: float) -> list[Any]:
    return [
        call
        for call in emulator.calls()
        if call.method.startswith("chat.") and since <= call.timestamp <= until
    ]


def live_of(bot: InProcessBot) -> Rollout:
    [newest] = bot.ctx.store.recent_rollouts("web", 1)
    return newest


def went_live(bot: InProcessBot) -> int:
    """How many deploys of web went live, by the audit trail (each outcome is audited once)."""
    return sum(
        1
        for e in bot.ctx.store.audit_entries(limit=50)
        if e.action == "deploy.live" and e.pipeline == "web"
    )


def running_versions(docker_client: docker.DockerClient, web: dict[str, Any]) -> list[str]:
    return sorted(
        c.labels["immune.version"]
        for c in containers_of(docker_client, web)
        if c.status == "running"
    )


def deploy_into_the_outage(
    bot: InProcessBot,
    redis_server: RedisServer,
    gate: HealthGate,
    emulator: SlackEmulator,
) -> tuple[str, float, float]:
    """web 1 live, then /deploy web 2; Redis stopped while its health check waits; the gate opened; Redis
    started again after OUTAGE_SECONDS. Returns the rollout id and the outage's bounds."""
    gate.open()
    deploy(bot, "web 1")
    assert finished(bot, "web", "1").status is RolloutStatus.good
    gate.shut()
    deploy(bot, "web 2")
    second = wait_until(
        lambda: next(
            (r for r in bot.ctx.store.recent_rollouts("web", 1) if r.version == "2"), None
        ),
        10,
        what="the rollout of 2",
    )
    wait_until(lambda: in_health_check(bot.ctx.store, second.id), 20, what="2's health check")
    redis_server.stop()
    stopped = time.time()
    gate.open()
    time.sleep(OUTAGE_SECONDS)
    restarted = time.time()
    redis_server.start()
    return second.id, stopped, restarted


def test_redis_away_mid_swap_the_swap_ends_and_what_it_kept_is_written_in_order(
    tmp_path: Path,
    redis_server_persistent: RedisServer,
    emulator: SlackEmulator,
    web_pipeline: Any,
    gate: HealthGate,
    docker_client: docker.DockerClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bot.services.runner")
    web = web_pipeline()
    app_health = web["health"]["url"]
    web["health"]["url"] = gate.url
    bot = start(tmp_path, redis_server_persistent, emulator, web)
    try:
        rollout_id, stopped, restarted = deploy_into_the_outage(
            bot, redis_server_persistent, gate, emulator
        )
        # While Redis was away the swap ended on the engine: 2 alone serves.
        assert running_versions(docker_client, web) == ["2"]
        assert serving_version({"health": {"url": app_health}}) == "2"
        # Slack was told nothing while Redis could not keep it.
        assert rollout_calls(emulator, stopped + 0.2, restarted) == []

        second = finished(bot, "web", "2")
        assert second.id == rollout_id
        assert second.status is RolloutStatus.good, second.error
        # Every step as it happened, in order, each ended: those of the outage written after.
        names = [step.name for step in second.steps]
        assert names == ["locate image", "start", "health check"], names
        assert all(step.status is StepStatus.done for step in second.steps), second.steps
        health = second.steps[-1]
        assert health.ended_at is not None and health.ended_at > stopped
        state = bot.ctx.store.pipeline("web")
        assert state.live_version == "2" and not state.inflight_rollout
        assert running_versions(docker_client, web) == ["2"]
        # Exactly once: one outcome in the audit trail, the message shows it.
        assert went_live(bot) == 2  # 1's and 2's
        message = next(m for m in emulator.messages(CHANNEL) if m["ts"] == second.message_ts)
        assert "live and good" in message["text"]
        lines = [r.getMessage() for r in caplog.records if rollout_id in r.getMessage()]
        assert sum("steps kept here until Redis answers" in line for line in lines) == 1, lines
        assert sum("Redis answers again after" in line for line in lines) == 1, lines
    finally:
        bot.stop()


def test_redis_away_past_the_bound_leaves_the_rollout_to_recovery_which_ends_it_once(
    tmp_path: Path,
    redis_server_persistent: RedisServer,
    emulator: SlackEmulator,
    web_pipeline: Any,
    gate: HealthGate,
    docker_client: docker.DockerClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bot.services.runner")
    web = web_pipeline()
    web["health"]["url"] = gate.url
    bot = start(tmp_path, redis_server_persistent, emulator, web, redis_outage_seconds=1.5)
    try:
        rollout_id, _, _ = deploy_into_the_outage(bot, redis_server_persistent, gate, emulator)
        assert running_versions(docker_client, web) == ["2"]
        left = [
            r.getMessage()
            for r in caplog.records
            if rollout_id in r.getMessage() and "REDIS_OUTAGE_SECONDS" in r.getMessage()
        ]
        assert len(left) == 1, left

        # Recovery (every replica, every 2 s) adopts it once Redis is back and its lock has
        # expired, finds 2 running healthy, and finishes it: once.
        second = finished(bot, "web", "2", timeout=40)
        assert second.id == rollout_id
        assert second.status is RolloutStatus.good, second.error
        assert running_versions(docker_client, web) == ["2"]
        assert bot.ctx.store.pipeline("web").live_version == "2"
        assert went_live(bot) == 2  # 1's and 2's
    finally:
        bot.stop()
