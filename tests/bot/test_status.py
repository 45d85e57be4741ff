"""/pipeline on a memory target: the engine view answers `/pipeline <name>` without asking the
engine while it is fresh and still about the pipeline's state; otherwise the engine is asked.
The view reads only the pipelines asked about lately. Redis is read once per status, for one
pipeline or all."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from bot.app import ENGINE_VIEW_INTERVAL_SECONDS, Immune, build
from bot.domain.config import Pipeline
from bot.domain.models import Rollout, RolloutStatus
from bot.plugins import Registry, TargetPlugin, default_registry, parse_pipelines
from bot.ports import LiveVersion
from bot.services import status
from bot.services.engine_view import MAX_AGE_SECONDS, WANTED_SECONDS
from bot.services.requests import CommandRequest
from bot.settings import Settings
from bot.slack.replies import answer_text
from tests.support.domain import CHANNEL, ContextRig, RecordingNotifier
from tests.support.fakes import MEMORY, MemoryTarget, check_memory_pipeline, memory_config
from tests.support.round_trips import count_round_trips
from tests.support.services import RedisServer


@dataclass
class CountingTarget(MemoryTarget):
    """A memory target that counts what it is asked about what runs, and can be unreachable."""

    askers: list[str] = field(default_factory=list)  # the thread of each question
    unreachable: bool = False

    @property
    def asked(self) -> int:
        return len(self.askers)

    def live(self, pipeline_name: str, pipeline: Pipeline) -> LiveVersion | None:
        self.askers.append(threading.current_thread().name)
        if self.unreachable:
            raise ConnectionError("the engine does not answer")
        return super().live(pipeline_name, pipeline)


def registry_with(target: MemoryTarget) -> Registry:
    return default_registry().add_target(
        TargetPlugin(name=MEMORY, build=lambda shared: target, check=check_memory_pipeline)
    )


class Rig(ContextRig):
    def __init__(self, client: redis.Redis) -> None:
        self.target = CountingTarget(images={"1", "2"})
        config = memory_config()
        config["pipelines"]["api"] = {
            **config["pipelines"]["web"],
            "container": {"name": f"api-{secrets.token_hex(3)}"},
        }
        parsed = parse_pipelines(config, registry=registry_with(self.target))
        super().__init__(client, parsed, {MEMORY: self.target})

    def runs(self, version: str, rollout_id: str) -> None:
        """`version` of web is live, in Redis and on the engine, as a finished rollout leaves it."""
        self.store.update_pipeline("web", live_version=version, live_rollout=rollout_id)
        self.target.running["web"] = LiveVersion(version, rollout_id, True)

    def status(self, text: str = "web") -> status.StatusReport:
        request = CommandRequest("/pipeline", text, "U0ADMIN", CHANNEL)
        report = status.pipeline_command(self.ctx, request)
        assert isinstance(report, status.StatusReport)
        return report

    def engine(self) -> LiveVersion | None:
        [web] = self.status().pipelines
        return web.engine

    def deploy(self, version: str) -> Rollout:
        self.clock.advance(1)  # rollouts are ordered by when they were asked for
        self.command("/deploy", f"web {version}")
        return self.finished(self.newest().id)


@pytest.fixture
def rig(redis_client: redis.Redis) -> Iterator[Rig]:
    made = Rig(redis_client)
    yield made
    made.runner.shutdown(wait=True)


def test_a_fresh_view_answers_without_asking_the_engine(rig: Rig) -> None:
    rig.runs("1", "r-unit-1")
    assert rig.engine() == LiveVersion("1", "r-unit-1", True)
    assert rig.target.asked == 1, "the first ask asks the engine"
    rig.clock.advance(MAX_AGE_SECONDS + 1)  # that answer is too old to be used now
    status.refresh_engine_view(rig.ctx)
    assert rig.target.asked == 2, "the job read the pipeline asked about, and not the other"
    rig.clock.advance(MAX_AGE_SECONDS)
    assert rig.engine() == LiveVersion("1", "r-unit-1", True)
    assert rig.target.asked == 2, "the ack did not ask the engine"


def test_the_answer_to_one_ask_serves_the_next(rig: Rig) -> None:
    rig.runs("1", "r-unit-1")
    assert rig.engine() == LiveVersion("1", "r-unit-1", True)
    rig.clock.advance(MAX_AGE_SECONDS)
    assert rig.engine() == LiveVersion("1", "r-unit-1", True)
    assert rig.target.asked == 1


def test_the_job_reads_nothing_while_nobody_asks(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    rig.runs("1", "r-unit-1")
    sent = count_round_trips(monkeypatch)
    status.refresh_engine_view(rig.ctx)
    assert rig.target.asked == 0, "no engine is asked for a status nobody wants"
    assert sent == [], "nor Redis"


def test_a_pipeline_nobody_asked_about_for_a_while_is_no_longer_read(rig: Rig) -> None:
    rig.runs("1", "r-unit-1")
    rig.engine()
    rig.clock.advance(WANTED_SECONDS - 1)
    status.refresh_engine_view(rig.ctx)
    assert rig.target.asked == 2, "still read: asked about within WANTED_SECONDS"
    rig.clock.advance(2)
    status.refresh_engine_view(rig.ctx)
    assert rig.target.asked == 2
    assert rig.ctx.engine_view.get("web") is None, "its reading is forgotten too"
    assert rig.engine() == LiveVersion("1", "r-unit-1", True)
    assert rig.target.asked == 3, "the next ask asks the engine, as the first did"


def test_without_a_reading_the_engine_is_asked(rig: Rig) -> None:
    rig.runs("1", "r-unit-1")
    assert rig.engine() == LiveVersion("1", "r-unit-1", True)
    assert rig.target.asked == 1


def test_a_stale_reading_is_not_used(rig: Rig) -> None:
    rig.runs("1", "r-unit-1")
    rig.engine()
    status.refresh_engine_view(rig.ctx)
    rig.target.running.pop("web")  # stopped behind the bot's back, after the last reading
    rig.clock.advance(MAX_AGE_SECONDS + 0.5)
    assert rig.engine() is None
    assert rig.target.asked == 3
    text = answer_text(rig.status())
    assert "the engine runs no container of this pipeline" in text


def test_a_reading_is_not_used_while_a_rollout_is_in_flight(rig: Rig) -> None:
    rig.runs("1", "r-unit-1")
    rig.engine()
    status.refresh_engine_view(rig.ctx)
    assert rig.store.claim_rollout("web", "r-unit-2", 3) is None
    rig.target.running["web"] = LiveVersion("2", "r-unit-2", True)  # mid-swap
    assert rig.engine() == LiveVersion("2", "r-unit-2", True)
    assert rig.target.asked == 3
    kept = rig.ctx.engine_view.get("web")
    assert kept is not None and kept.live == LiveVersion("1", "r-unit-1", True), (
        "an answer given while a rollout runs is not kept"
    )
    status.refresh_engine_view(rig.ctx)
    assert rig.ctx.engine_view.get("web") is None, "no reading is kept while one runs"


def test_a_reading_is_not_used_once_another_rollout_went_live(rig: Rig) -> None:
    rig.deploy("1")
    rig.engine()
    status.refresh_engine_view(rig.ctx)
    asked = rig.target.asked
    went_live = rig.deploy("2")
    assert went_live.status is RolloutStatus.good
    # The reading was of version 1's rollout; the state now names version 2's.
    assert rig.engine() == LiveVersion("2", went_live.id, True)
    assert rig.target.asked == asked + 1
    assert ":warning:" not in answer_text(rig.status())


def test_a_reading_that_disagrees_with_redis_is_confirmed_with_the_engine(rig: Rig) -> None:
    rig.store.update_pipeline("web", live_version="1", live_rollout="r-unit-1")
    rig.target.running["web"] = LiveVersion("0", "r-unit-0", True)
    assert rig.engine() == LiveVersion("0", "r-unit-0", True)
    status.refresh_engine_view(rig.ctx)
    rig.target.running["web"] = LiveVersion("1", "r-unit-1", True)  # put right since
    assert rig.engine() == LiveVersion("1", "r-unit-1", True)
    assert rig.target.asked == 3, "a warning is only shown from what the engine says now"


def test_an_unreachable_engine_drops_the_reading_and_the_job_carries_on(rig: Rig) -> None:
    rig.runs("1", "r-unit-1")
    rig.status("web")
    rig.status("api")
    status.refresh_engine_view(rig.ctx)
    assert rig.ctx.engine_view.get("web") is not None
    assert rig.ctx.engine_view.get("api") is not None
    rig.target.unreachable = True
    status.refresh_engine_view(rig.ctx)  # does not raise
    assert rig.ctx.engine_view.get("web") is None
    assert rig.ctx.engine_view.get("api") is None
    with pytest.raises(ConnectionError):
        rig.engine()  # asked, as before the view existed


def test_a_status_reads_redis_once_for_one_pipeline_or_all(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig.deploy("1")
    assert rig.store.claim_rollout("api", "r-unit-api", 3) is None
    rig.engine()
    sent = count_round_trips(monkeypatch)
    asked = rig.target.asked
    [web] = rig.status("web").pipelines
    assert web.watching is not None and web.watching.version == "1"
    assert len(sent) == 1 and rig.target.asked == asked
    sent.clear()
    report = rig.status("")
    assert [s.name for s in report.pipelines] == ["api", "web"]
    assert len(sent) == 1, "one round trip for every pipeline"
    assert all(s.engine is None for s in report.pipelines), "the engine is shown for one only"


# The job -------------------------------------------------------------------------------------


@pytest.fixture
def immune(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[Immune, CountingTarget]]:
    redis_server.ensure_running()
    target = CountingTarget(images={"1", "2"})
    registry = registry_with(target)
    settings = Settings(
        redis_url=redis_server.url,
        redis_prefix=f"immune-status-{secrets.token_hex(3)}",
        pipelines_file=str(tmp_path / "unused.yml"),
        docker_host="unix:///nonexistent/docker.sock",  # never dialled: no pipeline uses it
        prometheus_url="http://127.0.0.1:9",
        slack_api_url="http://127.0.0.1:9/api/",  # never called: the notifier records
        slack_bot_token="xoxb-test",
        slack_signing_secret="test-signing-secret",
        slack_token_verification=False,
    )
    bot = build(
        settings,
        config=parse_pipelines(memory_config(), registry=registry),
        notifier=RecordingNotifier(),
        registry=registry,
    )
    try:
        yield bot, target
    finally:
        bot.stop()


def test_the_bot_refreshes_the_view_every_couple_of_seconds(
    immune: tuple[Immune, CountingTarget],
) -> None:
    bot, target = immune
    bot.ctx.store.update_pipeline("web", live_version="1", live_rollout="r-unit-1")
    target.running["web"] = LiveVersion("1", "r-unit-1", True)
    bot.start()
    assert bot.ctx.engine_view.get("web") is None, "nothing is read before anybody asks"
    job = bot.scheduler.get_job("refresh-engine-view")
    assert job is not None
    request = CommandRequest("/pipeline", "web", "U0ADMIN", CHANNEL)
    report = status.pipeline_command(bot.ctx, request)
    assert isinstance(report, status.StatusReport)
    assert report.pipelines[0].engine == LiveVersion("1", "r-unit-1", True)
    target.running["web"] = LiveVersion("1", "r-unit-1", False)
    wait_for(
        lambda: (
            getattr(bot.ctx.engine_view.get("web"), "live", None)
            == LiveVersion("1", "r-unit-1", False)
        ),
        ENGINE_VIEW_INTERVAL_SECONDS * 3,
    )
    asked = target.asked
    report = status.pipeline_command(bot.ctx, request)
    assert isinstance(report, status.StatusReport)
    assert report.pipelines[0].engine == LiveVersion("1", "r-unit-1", False)
    me = threading.current_thread().name
    assert me not in target.askers[asked:], "the status was answered from the view"


def wait_for(done: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "not refreshed in time"
        time.sleep(0.05)
