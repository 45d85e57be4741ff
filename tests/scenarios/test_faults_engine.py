"""The Docker engine goes away (issue 15 item 1), on a dockerd of this module's own.

The bot deploys to a private engine (tests/support/private_engine.py) that the tests stop with
SIGTERM, as an operator or a package upgrade does, and start again; the shared engine is never
touched. What must hold: a rollout caught in its swap fails safe or finishes once, never two
versions serving or none; a watch is paused (no breach) and goes on; the channel is told once
each way; /healthz shows the engine down; /deploy gets a clear refusal; an old version the
engine's restart policy brings back is stopped.
"""

from __future__ import annotations

import gc
import time
import warnings
from collections.abc import Iterator
from typing import Any

import docker
import pytest
import requests

from bot.domain.models import RolloutStatus
from tests.conftest import unavailable
from tests.scenarios.test_deploy_loop import deploy, finished, serving_version
from tests.scenarios.test_watch import error_rate_kpi, watched_rollout_ended
from tests.support.bot_harness import CHANNEL, InProcessBot, docker_pipeline, free_port, wait_until
from tests.support.private_engine import PrivateEngine
from tests.support.services import ServiceUnavailable

pytestmark = [
    pytest.mark.docker,
    # While the engine is away, each call the bot makes through the docker SDK leaves the
    # socket of its failed connection for the garbage collector to close (the SDK's
    # UnixHTTPConnection.connect does not close it): Python's ResourceWarning, an error here.
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
]

GONE = "does not answer"
BACK = "answers again"


@pytest.fixture(scope="module")
def engine(demo_images: Any, docker_client: docker.DockerClient) -> Iterator[PrivateEngine]:
    """This module's dockerd, holding the demo images 1 and 2 (copied from the shared one)."""
    try:
        private = PrivateEngine()
    except ServiceUnavailable as error:
        unavailable(str(error))
    try:
        private.start()
        private.load_images(docker_client, [demo_images.ref(1), demo_images.ref(2)])
        yield private
    finally:
        private.close()
        _collect_quietly()


@pytest.fixture(autouse=True)
def _collect_failed_connections() -> Iterator[None]:
    """Set up first, torn down last: the sockets left by the bot's failed engine calls are
    closed while this module's warning filter holds, not in a later test."""
    yield
    _collect_quietly()


def _collect_quietly() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture
def private_engine(engine: PrivateEngine, unique_name: str) -> Iterator[PrivateEngine]:
    """The module's engine, running at the start of each test; the test's containers go after."""
    engine.start()
    yield engine
    engine.start()
    for container in engine.client.containers.list(all=True):
        if container.name.startswith(unique_name):
            container.remove(force=True)


def running_versions(engine: PrivateEngine, name: str) -> list[str]:
    """The versions of the pipeline's containers the engine runs (or keeps restarting)."""
    containers = engine.client.containers.list(
        all=True, filters={"label": f"immune.container={name}"}
    )
    return sorted(
        c.labels.get("immune.version", "?")
        for c in containers
        if c.status in ("running", "restarting")
    )


def channel_saying(emulator: Any, words: str) -> list[str]:
    return [m["text"] for m in emulator.messages(CHANNEL) if words in m.get("text", "")]


def engine_health(bot: InProcessBot) -> dict[str, Any]:
    report: dict[str, Any] = requests.get(bot.url + "/healthz", timeout=5).json()["docker"]
    return report


def newest(bot: InProcessBot) -> Any:
    return bot.ctx.store.recent_rollouts("web", 1)[0]


def test_engine_stopped_mid_swap_then_started_fails_safe_with_one_version_serving(
    start_bot: Any,
    private_engine: PrivateEngine,
    demo_images: Any,
    unique_name: str,
    emulator: Any,
) -> None:
    # The old version ignores its stop signal, so stopping it takes the bot's full 10 s stop
    # timeout: the engine is stopped inside the swap, while nothing serves.
    web = docker_pipeline(image=demo_images.repo, container_name=unique_name, port=free_port())
    web["container"]["stop_signal"] = "SIGWINCH"
    bot = start_bot({"pipelines": {"web": web}}, docker_host=private_engine.host)
    deploy(bot, "web 1")
    assert finished(bot, "web", "1").status is RolloutStatus.good
    assert serving_version(web) == "1"

    deploy(bot, "web 2")
    wait_until(
        lambda: any(s.name == "start" and s.ended_at is None for s in newest(bot).steps),
        20,
        what="the swap to stop the old version",
    )
    time.sleep(0.5)
    took = private_engine.stop()  # dockerd ends the stop under way, then exits

    # The rollout waits for the engine; the channel is told; /healthz and /deploy say so.
    wait_until(lambda: channel_saying(emulator, GONE), 10, what="the channel to be told")
    in_flight = newest(bot)
    assert in_flight.version == "2" and in_flight.status is RolloutStatus.in_flight, (
        in_flight.error,
        in_flight.steps,
    )
    assert any(s.name == "engine unreachable" for s in in_flight.steps), in_flight.steps
    assert engine_health(bot)["ok"] is False
    refused = bot.slack.command("/deploy", "web 1").json()
    assert refused["response_type"] == "ephemeral" and GONE in refused["text"], refused

    private_engine.start()
    ended = finished(bot, "web", "2", timeout=40)
    assert ended.status is RolloutStatus.failed, ended
    assert "rolled back when it came back" in (ended.error or ""), ended.error
    assert "1 serves again" in ended.notes, ended.notes
    # One version serves, the one Redis records as live: never two, never none.
    assert running_versions(private_engine, unique_name) == ["1"]
    assert serving_version(web) == "1"
    state = bot.ctx.store.pipeline("web")
    assert state.live_version == "1" and not state.inflight_rollout
    wait_until(lambda: channel_saying(emulator, BACK), 10, what="the channel to hear it is back")
    time.sleep(2)  # a second announcement would come within the engine job's next pings
    assert len(channel_saying(emulator, GONE)) == 1
    assert len(channel_saying(emulator, BACK)) == 1
    assert engine_health(bot)["ok"] is True and "down_since" not in engine_health(bot)
    assert took < 30


@pytest.mark.prometheus
def test_engine_stopped_mid_watch_pauses_the_watch_and_it_goes_on_when_back(
    start_bot: Any,
    private_engine: PrivateEngine,
    demo_images: Any,
    unique_name: str,
    emulator: Any,
    prometheus_server: Any,
) -> None:
    port = free_port()
    web = docker_pipeline(
        image=demo_images.repo,
        container_name=unique_name,
        port=port,
        watch={"interval": "1s", "duration": "10s", "warmup": 3},
        kpis=[error_rate_kpi(unique_name)],  # no data is a breach (the default)
    )
    prometheus_server.set_targets({"pipeline": unique_name}, [f"127.0.0.1:{port}"])
    prometheus_server.wait_for_series(f'up{{pipeline="{unique_name}"}}', timeout=20)
    bot = start_bot(
        {"pipelines": {"web": web}},
        docker_host=private_engine.host,
        prometheus_url=prometheus_server.url,
    )
    deploy(bot, "web 1")
    live = finished(bot, "web", "1")
    assert live.status is RolloutStatus.live
    first_watch = bot.ctx.store.watch(live.id)
    assert first_watch is not None
    wait_until(
        lambda: any(s.verdict == "ok" for s in bot.immune.watcher.samples(live.id)),
        20,
        what="a judged poll",
    )

    private_engine.stop()
    wait_until(lambda: channel_saying(emulator, GONE), 10, what="the channel to be told")
    health = engine_health(bot)
    assert health["ok"] is False and "down_since" in health, health
    refused = bot.slack.command("/deploy", "web 2").json()
    assert refused["response_type"] == "ephemeral" and GONE in refused["text"], refused
    assert "run the command again" in refused["text"]
    polled = len(bot.immune.watcher.samples(live.id))
    time.sleep(4)  # four poll slots with the engine, the container and its metrics gone
    assert len(bot.immune.watcher.samples(live.id)) == polled, "paused polls record nothing"
    assert bot.ctx.store.rollout(live.id).status is RolloutStatus.live
    assert not bot.ctx.store.pipeline("web").halted

    private_engine.start()
    wait_until(lambda: channel_saying(emulator, BACK), 20, what="the channel to hear it is back")
    back = channel_saying(emulator, BACK)[0]
    assert "started `1` again" in back and "its watch goes on" in back, back
    ended = watched_rollout_ended(bot, "1", timeout=60)
    samples = bot.immune.watcher.samples(live.id)
    assert ended.status is RolloutStatus.good, samples
    assert not ended.incident_id
    assert [s for s in samples if s.verdict == "breach"] == []
    # The watch went on past its first end: the paused slots were added to it.
    assert max(s.slot for s in samples) > first_watch.last_slot
    assert bot.ctx.store.pipeline("web").last_good_version == "1"
    assert running_versions(private_engine, unique_name) == ["1"]
    assert len(channel_saying(emulator, GONE)) == 1
    assert len(channel_saying(emulator, BACK)) == 1


def test_an_old_version_the_restart_policy_brings_back_is_stopped(
    start_bot: Any,
    private_engine: PrivateEngine,
    demo_images: Any,
    unique_name: str,
    emulator: Any,
) -> None:
    # `always` restarts even a container the bot stopped, when the engine starts again.
    web = docker_pipeline(image=demo_images.repo, container_name=unique_name, port=free_port())
    web["container"]["restart_policy"] = {"Name": "always"}
    bot = start_bot({"pipelines": {"web": web}}, docker_host=private_engine.host)
    deploy(bot, "web 1")
    assert finished(bot, "web", "1").status is RolloutStatus.good
    deploy(bot, "web 2")
    assert finished(bot, "web", "2").status is RolloutStatus.good
    assert running_versions(private_engine, unique_name) == ["2"]

    private_engine.stop()
    wait_until(lambda: channel_saying(emulator, GONE), 10, what="the channel to be told")
    private_engine.start()

    wait_until(lambda: channel_saying(emulator, BACK), 30, what="the channel to hear it is back")
    back = channel_saying(emulator, BACK)[0]
    assert "stopped `1`, which the engine had started again" in back, back
    assert running_versions(private_engine, unique_name) == ["2"]
    time.sleep(2)  # stopped by the bot, the engine leaves it stopped
    assert running_versions(private_engine, unique_name) == ["2"]
    assert serving_version(web) == "2"
    state = bot.ctx.store.pipeline("web")
    assert state.live_version == "2"
    assert len(channel_saying(emulator, BACK)) == 1
