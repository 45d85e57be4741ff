"""Running the real bot for a section and driving it the way Slack and people do."""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Collection
from typing import Any

from bench.rig import BenchRig
from bot.domain.models import Rollout, RolloutKind, RolloutStatus, new_id
from bot.store.store import Store
from tests.support.bot_harness import (
    CHANNEL,
    InProcessBot,
    bot_settings,
    docker_pipeline,
    write_pipelines,
)

ROLLOUT_ID = re.compile(r"\b(r-\d{8}-[0-9a-f]{6})\b")
ADMIN = "U0ADMIN"
DEPLOYER = "U0DEV1"
OTHER_REPLICA_USER = "U0OTHER"
LOCK_TTL_SECONDS = 15.0
"""The production default (bot/settings.py); the tests' harness shortens it to 3 s."""
REQUEST_THREAD_PREFIX = "waitress-"  # the threads bot.server.HttpServer answers requests on
SETTLED = frozenset(
    {
        RolloutStatus.good,
        RolloutStatus.failed,
        RolloutStatus.cancelled,
        RolloutStatus.rolled_back,
        RolloutStatus.superseded,
        RolloutStatus.rejected,
        RolloutStatus.expired,
    }
)


def on_request_thread() -> bool:
    """This thread is one the HTTP server answers requests on."""
    return threading.current_thread().name.startswith(REQUEST_THREAD_PREFIX)


def pipeline(rig: BenchRig, what: str, **extra: Any) -> tuple[str, int, dict[str, Any]]:
    """A docker pipeline of the demo image, on a port of its own: (name, port, config)."""
    assert rig.images is not None
    name = rig.name(what)
    port = rig.free_port()
    return (
        name,
        port,
        docker_pipeline(image=rig.images.repo, container_name=name, port=port, **extra),
    )


def start_bot(rig: BenchRig, pipelines: dict[str, dict[str, Any]], what: str) -> InProcessBot:
    """The production app and HTTP server in this process, on the rig's Redis and emulator."""
    assert rig.redis is not None and rig.prometheus is not None and rig.emulator is not None
    path = rig.workdir / f"pipelines-{what}.yml"
    write_pipelines(path, {"timezone": "UTC", "admins": [ADMIN], "pipelines": pipelines})
    env = bot_settings(
        redis_url=rig.redis.url,
        emulator=rig.emulator,
        pipelines_file=path,
        prometheus_url=rig.prometheus.url,
        prefix=f"bench-{what}-{secrets.token_hex(3)}",
        lock_ttl_seconds=LOCK_TTL_SECONDS,
    )
    return InProcessBot(env, rig.emulator)


def rollout_id_in(text: str) -> str:
    match = ROLLOUT_ID.search(text)
    if match is None:
        raise AssertionError(f"no rollout id in the answer: {text[:300]!r}")
    return match.group(1)


def wait_for_rollout(
    store: Store,
    rollout_id: str,
    statuses: Collection[RolloutStatus] = SETTLED,
    timeout: float = 60.0,
) -> Rollout:
    deadline = time.monotonic() + timeout
    while True:
        rollout = store.rollout(rollout_id)
        if rollout is not None and rollout.status in statuses:
            return rollout
        if time.monotonic() >= deadline:
            state = rollout.status.value if rollout else "missing"
            raise TimeoutError(f"rollout {rollout_id} still {state} after {timeout:g} s")
        time.sleep(0.02)


def command(bot: InProcessBot, name: str, text: str, user: str = DEPLOYER) -> str:
    """A signed slash command through the bot's HTTP endpoint; the ack's text."""
    reply = bot.slack.command(name, text, user_id=user, channel_id=CHANNEL)
    if reply.status != 200:
        raise AssertionError(f"{name} {text}: HTTP {reply.status} {reply.text[:300]}")
    return reply.text


def deploy_and_wait(
    bot: InProcessBot,
    pipeline_name: str,
    version: str,
    statuses: Collection[RolloutStatus] = (RolloutStatus.good,),
    timeout: float = 60.0,
) -> Rollout:
    """/deploy, then wait until the rollout reaches one of `statuses` (good by default)."""
    wait_unlocked(bot.ctx.store, pipeline_name)
    answer = command(bot, "/deploy", f"{pipeline_name} {version}")
    if "Deploying" not in answer:
        raise AssertionError(f"deploy of {version} to {pipeline_name} refused: {answer[:300]}")
    rollout = wait_for_rollout(bot.ctx.store, rollout_id_in(answer), {*statuses, *SETTLED}, timeout)
    if rollout.status not in statuses:
        raise AssertionError(
            f"deploy of {version} to {pipeline_name} ended {rollout.status.value}: {rollout.error}"
        )
    return rollout


def wait_unlocked(store: Store, pipeline_name: str, timeout: float = 30.0) -> None:
    """Until the pipeline's rollout lock is free.

    A rollout's record says `good` a little before its worker releases the lock (it still
    updates the Slack message and the pipeline), and a command in between is refused.
    """
    deadline = time.monotonic() + timeout
    while store.rollout_lock_holder(pipeline_name) is not None:
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{pipeline_name}: rollout lock still held after {timeout:g} s")
        time.sleep(0.01)


def hold_in_flight(store: Store, pipeline_name: str, image: str, version: str) -> Rollout:
    """A rollout in flight on another replica: its lock held, its record in Redis.

    Made through the Store exactly as `start_rollout` makes one, with a lock that outlives the
    section, so every `/deploy` of the pipeline is refused with "already in flight".
    """
    rollout = Rollout(
        id=new_id("r"),
        pipeline=pipeline_name,
        kind=RolloutKind.deploy,
        version=version,
        reference=f"{image}:{version}",
        image_tag=version,
        requested_by=OTHER_REPLICA_USER,
        created_at=time.time(),
        status=RolloutStatus.in_flight,
        channel=CHANNEL,
    )
    holder = store.claim_rollout(pipeline_name, rollout.id, 3600)
    if holder is not None:
        raise AssertionError(f"{pipeline_name} already has a rollout in flight: {holder}")
    store.create_rollout(rollout)
    return rollout


class EngineCalls:
    """Counts the Docker Engine API calls the bot makes while it answers requests (on the HTTP
    server's threads); the background jobs' calls (the engine view, recovery) are not counted."""

    def __init__(self, bot: InProcessBot) -> None:
        self.count = 0
        # The engine client the targets share (a requests.Session: every call goes via send()).
        api = bot.immune.runner.targets["docker"].client.api  # type: ignore[attr-defined]
        original = api.send

        def send(request: Any, **options: Any) -> Any:
            if on_request_thread():
                self.count += 1
            return original(request, **options)

        api.send = send
