"""The engine going away, on a memory target and a real Redis: the watch's outage rule, the
runner's bounded wait, and the engine job's announcements and reconciliation (no Docker)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from bot.domain.errors import EngineUnreachable
from bot.domain.models import RolloutStatus, WatchState
from bot.plugins import TargetPlugin, default_registry, parse_pipelines
from bot.ports import Progress, RolloutRequest, SwapResult
from bot.services.engines import check_engines
from tests.support.domain import CHANNEL, START, ContextRig
from tests.support.fakes import MEMORY, MemoryTarget, check_memory_pipeline, memory_config


def watch(**fields: Any) -> WatchState:
    values: dict[str, Any] = {
        "rollout_id": "r-1",
        "pipeline": "web",
        "started_at": START,
        "interval": 1.0,
        "duration": 10.0,
        "warmup": 2,
    }
    values.update(fields)
    return WatchState(**values)


# The rule: a watch after an outage ----------------------------------------------------------


def test_an_outage_adds_its_slots_and_a_fresh_warmup_to_the_end_of_the_watch() -> None:
    before = watch()
    assert before.last_slot == 10 and before.warmup_until == 2
    after = before.after_outage(down_since=START + 4.5, back_at=START + 7.2)
    # Slots 4 to 7 were paused (4 slots), and 2 warm-up polls follow the return.
    assert after.last_slot == 10 + 4 + 2
    assert after.warmup_until == 7 + 2
    # Judged polls: 8 promised (slots 3-10); 8 still: slot 3, then 10-16 (4-7 paused, 8-9 warm-up).
    judged = [s for s in range(1, after.last_slot + 1) if s > after.warmup_until or s == 3]
    assert len(judged) == before.last_slot - before.warmup


def test_an_outage_during_the_first_warmup_keeps_the_later_warmup() -> None:
    after = watch(warmup=5).after_outage(down_since=START + 0.5, back_at=START + 1.5)
    assert after.warmup_until == 1 + 5
    assert after.duration == 10.0 + (2 + 5) * 1.0


def test_no_outage_changes_nothing() -> None:
    before = watch()
    assert before.after_outage(START + 5, START + 5) == before
    assert before.after_outage(START + 5, START + 4) == before


def test_two_outages_add_up() -> None:
    once = watch().after_outage(START + 2.0, START + 3.0)
    twice = once.after_outage(START + 6.0, START + 6.5)
    assert twice.duration == 10.0 + (2 + 2) + (1 + 2)
    assert twice.warmup_until == 6 + 2


# The runner and the engine job, on a memory engine that can go away --------------------------


@dataclass
class AwayTarget(MemoryTarget):
    """A memory engine that goes away in the middle of a swap, then (maybe) comes back."""

    away: threading.Event = field(default_factory=threading.Event)
    recovered: list[str] = field(default_factory=list)

    def health(self) -> dict[str, object]:
        return {"ok": not self.away.is_set()}

    def roll_out(self, request: RolloutRequest, progress: Progress) -> SwapResult:
        self.away.set()
        raise EngineUnreachable("The Docker engine does not answer (FileNotFoundError).")

    def recover(self, request: RolloutRequest, progress: Progress) -> bool:
        self.recovered.append(request.image.version)
        return False  # nothing new runs: the old version serves again

    def reconcile(self, pipeline_name: str, pipeline: Any, live_version: str) -> list[str]:
        self.calls.append(("reconcile", live_version))
        return [f"stopped `9`, which the engine had started again (kept {live_version})"]


REGISTRY = default_registry().add_target(
    TargetPlugin(name=MEMORY, build=lambda shared: MemoryTarget(), check=check_memory_pipeline)
)


@pytest.fixture
def rig(redis_client: redis.Redis) -> Iterator[Callable[[float], tuple[ContextRig, AwayTarget]]]:
    rigs: list[ContextRig] = []

    def make(wait: float) -> tuple[ContextRig, AwayTarget]:
        target = AwayTarget(images={"1", "2"})
        config = parse_pipelines(memory_config(), registry=REGISTRY)
        made = ContextRig(redis_client, config, {MEMORY: target})
        made.runner.settings.engine_wait_seconds = wait
        made.runner.settings.engine_poll_seconds = 0.02
        made.store.update_pipeline("web", live_version="1", live_rollout="r-old")
        rigs.append(made)
        return made, target

    yield make
    for made in rigs:
        made.runner.shutdown(wait=True)


def test_a_rollout_whose_engine_stays_away_fails_after_the_bound_and_frees_the_pipeline(
    rig: Callable[[float], tuple[ContextRig, AwayTarget]],
) -> None:
    made, target = rig(0.3)
    made.command("/deploy", "web 2")
    ended = made.finished(made.newest().id)
    assert ended.status is RolloutStatus.failed
    assert "did not answer for 0.3s (ENGINE_WAIT_SECONDS) mid-swap" in (ended.error or "")
    assert "could NOT restore 1: check the engine now" in ended.notes
    assert [s.name for s in ended.steps][-1] == "engine unreachable"
    assert target.recovered == []  # never touched while away
    state = made.store.pipeline("web")
    assert not state.inflight_rollout and state.live_version == "1"


def test_a_rollout_whose_engine_comes_back_is_undone_once_and_reconciled(
    rig: Callable[[float], tuple[ContextRig, AwayTarget]],
) -> None:
    made, target = rig(10.0)
    threading.Timer(0.3, target.away.clear).start()
    made.command("/deploy", "web 2")
    ended = made.finished(made.newest().id)
    assert ended.status is RolloutStatus.failed, ended
    assert ended.error == "the engine went away mid-swap; rolled back when it came back"
    assert target.recovered == ["2"]
    assert ("reconcile", "1") in target.calls
    assert "1 serves again" in ended.notes


def test_the_engine_job_tells_each_channel_once_each_way_and_refuses_deploys_meanwhile(
    rig: Callable[[float], tuple[ContextRig, AwayTarget]],
) -> None:
    made, target = rig(10.0)
    made.store.start_watch(watch(rollout_id="r-old", started_at=START - 3))
    target.away.set()
    for _ in range(3):
        check_engines(made.ctx, {MEMORY: target})
    gone = [text for channel, text in made.notifier.posts if "does not answer" in text]
    assert len(gone) == 1 and made.notifier.posts[0][0] == CHANNEL
    assert made.ctx.engines.down_since(MEMORY) == START
    with pytest.raises(EngineUnreachable) as refused:
        made.command("/deploy", "web 2")
    assert "does not answer" in refused.value.message
    assert made.store.recent_rollouts("web", 5) == []

    made.clock.advance(5)
    target.away.clear()
    for _ in range(3):
        check_engines(made.ctx, {MEMORY: target})
    back = [text for channel, text in made.notifier.posts if "answers again" in text]
    assert len(back) == 1, made.notifier.posts
    assert "after 5s without it" in back[0] and "stopped `9`" in back[0]
    assert target.calls.count(("reconcile", "1")) == 1
    assert made.ctx.engines.down_since(MEMORY) is None
    lengthened = made.store.watch("r-old")
    assert lengthened is not None and lengthened.duration > 10.0
