"""The judges on traces recorded from the real rig (issue 12, item 4): tests/data/judge_traces/,
replayed by tests/support/judge_replay.py (also `python -m bench --only judge`).

Goals, for the compare judge: no false rollback on a healthy or shared-noise trace; every
regression of 1.5x or more caught within its step. The 150 req/s traces are power-sized steps
(145 polls) and keep both. At 20 req/s one 24-poll step cannot keep the second for the error
rate (a count test needs more failures than the step holds; 1.5x would need a step of about
13 min), so the goal is also kept as a step can keep it, and checked as such: every regression
of 1.5x or more that its step can detect (its factor at least the step's detectable factor,
80% power at the level of the step's last look) caught, and every one it misses below that. The original
goal stays, its misses strict xfails. And the replay is the watch: a few traces go through the real Watcher
on Redis, poll for poll.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import redis

from bot.domain.kpis import counter_query
from bot.domain.models import RolloutStatus
from tests.bot.test_traffic import Rig, poll_both, traffic_pipeline
from tests.support import judge_replay as jr

TRACES = jr.load_traces()
KINDS = ("error_rate", "latency")
LEVELS = ("low", "high")
SCENARIOS = (
    "healthy",
    "shared_spike",
    "one_scrape_spike",
    "slow_burn",
    *(f"regression-{f:g}x" for f in (1.2, 1.5, 2, 3, 10)),
)


# Goals the recorded data does not meet, each below what its step can detect (the numbers are
# the replay's, `python -m bench --only judge`, which shows each step's detectable factor;
# checked by test_every_known_miss_is_below_what_its_step_detects). Strict: a fix, or steps
# re-recorded long enough (bench/README.md), makes them pass, and the mark has to go. The
# 150 req/s level was re-recorded with power-sized steps (145 polls, 2026-12-06): its 1.5x and
# 2x error-rate regressions, misses of the 24-poll step, are caught and their marks are gone.
_LOW = (
    "at 20 req/s a 24-poll step counts 210 responses per version from its first judged poll; "
    "at the baseline's 1% that detects a worsening of 5.5x or more (80% power at 0.95, its last "
    "look held to 0.025), and 1.5x would need a judged step of about 13 min at this traffic: "
    "this step held {what}"
)
KNOWN = {
    "error_rate-low-regression-1.5x": _LOW.format(
        what="2 of 210 failed against 1 of 210 (Fisher exact p=0.5)"
    ),
    "error_rate-low-regression-2x": _LOW.format(what="5 of 210 against 2 of 210 (p=0.225)"),
    "error_rate-low-regression-3x": _LOW.format(what="9 of 210 against 3 of 210 (p=0.07)"),
}
NOT_RECORDED = (
    "recorded before the recorder kept the slots' response counters, which the count judge of "
    "the built-in error_rate reads; re-recording the 150 req/s level failed here (the machine "
    "saturated by other work, load average 80): `python -m bench.record_traces --levels high`"
)


def _by(predicate: Any) -> list[Any]:
    params = []
    for t in TRACES:
        if not predicate(t):
            continue
        marks: list[Any] = []
        if not t.replayable_by_compare:
            marks = [pytest.mark.skip(reason=NOT_RECORDED)]
        elif t.name in KNOWN:
            marks = [pytest.mark.xfail(strict=True, reason=KNOWN[t.name])]
        params.append(pytest.param(t, id=t.name, marks=marks))
    return params


def _explained(result: jr.Replay) -> str:
    return "; ".join(
        f"{p.slot}: {p.value} vs {p.baseline} {p.verdict.value}" for p in result.polls
    ) + (f" -> {result.detail}" if result.detail else "")


def test_the_trace_set_is_complete_and_as_prometheus_answered() -> None:
    names = {t.name for t in TRACES}
    expected = {f"{k}-{lv}-{s}" for k in KINDS for lv in LEVELS for s in SCENARIOS}
    assert names == expected, (sorted(expected - names), sorted(names - expected))
    for trace in TRACES:
        assert len(trace.polls) >= 20, trace.name
        values = [v for pair in trace.polls for v in pair if v is not None]
        assert all(math.isfinite(v) and v >= 0 for v in values), trace.name
        judged = trace.polls[jr.WARMUP :]
        assert all(b is not None for _, b in judged), f"{trace.name}: the baseline had no data"


@pytest.mark.parametrize("trace", _by(lambda t: t.scenario in jr.HEALTHY_SCENARIOS))
def test_compare_rolls_back_no_healthy_or_shared_noise_trace(trace: jr.Trace) -> None:
    result = jr.replay(trace, jr.kpi(trace.kind, "compare"))
    assert not result.rolled_back, _explained(result)


@pytest.mark.parametrize("trace", _by(lambda t: t.fixed_regression and t.factor >= jr.GOAL_FACTOR))
def test_compare_catches_every_regression_of_1_5x_or_more_within_its_step(
    trace: jr.Trace,
) -> None:
    result = jr.replay(trace, jr.kpi(trace.kind, "compare"))
    assert result.rolled_back, _explained(result)


@pytest.mark.parametrize(
    "trace",
    _by(lambda t: t.fixed_regression and t.factor >= jr.GOAL_FACTOR and jr.detectable_in_step(t)),
)
def test_compare_catches_every_regression_of_1_5x_or_more_its_step_can_detect(
    trace: jr.Trace,
) -> None:
    result = jr.replay(trace, jr.kpi(trace.kind, "compare"))
    assert result.rolled_back, _explained(result)


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_every_known_miss_is_below_what_its_step_detects(name: str) -> None:
    """The original goal's misses are the step's limits, not the judge's: each regression it
    keeps is smaller than what a step of its responses detects, and the bench's table says so."""
    [trace] = [t for t in TRACES if t.name == name]
    found = jr.step_detectable(trace, injected=True)
    assert found is not None and found.factor is not None
    assert trace.factor < found.factor, (trace.factor, found.factor)
    assert not jr.detectable_in_step(trace)
    goal_seconds = jr.seconds_for_goal(trace)
    assert goal_seconds is not None and goal_seconds > (len(trace.polls) - jr.WARMUP - 1)


# The replay is the watch ------------------------------------------------------------------


def _cross_checked() -> list[Any]:
    """A trace of each kind each judge keeps and rolls back (the compare judge reads each
    built-in its own way), and one with no data mid-step if any."""
    chosen: dict[str, tuple[jr.Trace, str]] = {}
    for result in jr.replay_all(TRACES):
        outcome = "rolled-back" if result.rolled_back else "kept"
        key = f"{result.judge}-{result.trace.kind}-{outcome}"
        chosen.setdefault(key, (result.trace, result.judge))
        if any(new is None for new, _ in result.trace.polls[jr.WARMUP :]):
            chosen.setdefault(f"{result.judge}-no-data", (result.trace, result.judge))
    return [pytest.param(t, j, id=f"{key}-{t.name}") for key, (t, j) in sorted(chosen.items())]


def _watched_rig(client: redis.Redis, trace: jr.Trace, judged_by: str) -> Rig:
    # The trace is one step: the canary's step lasts as many polls, so each look's place in
    # it (bot.domain.judging.look_alpha) is the replay's.
    steps = f"{len(trace.polls) * trace.interval:g}s"
    config = traffic_pipeline(strategy="canary", steps=[50, 100], step_duration=steps)
    kpi = jr.kpi(trace.kind, judged_by).model_dump(by_alias=True, exclude_none=True)
    if judged_by != "compare":
        kpi.pop("builtin")
        kpi.update(query="kpi{{version}}")
    # A built-in compared: its own queries and the slots' counters, scripted.
    kpi["source"] = "scripted"
    web = config["pipelines"]["web"]
    web["kpis"] = [kpi]
    web["watch"] = {"interval": "1s", "duration": "2s", "warmup": jr.WARMUP}
    return Rig(client, config)


def _script_counters(
    rig: Rig, rollout_id: str, counters: tuple[float, float, float, float] | None
) -> None:
    """What the scripted source answers for the slots' response counters at the next poll."""
    rig.wait_for(lambda: rig.store.watch(rollout_id) is not None, "the watch recorded")
    rollout = rig.store.rollout(rollout_id)
    assert rollout is not None
    traffic = rig.config.pipelines["web"].traffic
    values = iter(counters if counters is not None else (None,) * 4)
    for baseline in (False, True):
        for name in ("failed", "responses"):
            query = counter_query(name, traffic, rollout.traffic, baseline=baseline)
            if query is not None:
                rig.source.values[query] = [next(values)]


@pytest.mark.parametrize(("trace", "judged_by"), _cross_checked())
def test_the_replay_judges_each_poll_as_the_watch_does(
    redis_client: redis.Redis, trace: jr.Trace, judged_by: str
) -> None:
    rig = _watched_rig(redis_client, trace, judged_by)
    try:
        first = rig.deploy("1", RolloutStatus.live)
        for _ in range(2):  # a first deploy: no baseline, judged good at the watch's end
            poll_both(rig, first.id, 0.0, 0.0)
        rig.settled(first.id, lambda r: r.status is RolloutStatus.good)
        canary = rig.deploy("2", RolloutStatus.live)
        for (new, base), counters in zip(trace.polls, trace.counters, strict=True):
            _script_counters(rig, canary.id, counters)
            poll_both(rig, canary.id, new, base)  # type: ignore[arg-type]
            if rig.store.rollout(canary.id).status is not RolloutStatus.live:  # type: ignore[union-attr]
                break
        watched = [(s.slot, s.verdict, s.baseline, s.counts) for s in rig.store.samples(canary.id)]
        ended = rig.store.rollout(canary.id)
        if ended is not None and ended.status is RolloutStatus.rolled_back:
            # The chart is drawn once the rollback is over, on a thread of its own.
            rig.wait_for(lambda: bool(rig.notifier.charts), "the breach chart posted")
    finally:
        rig.runner.shutdown(wait=True)
    result = jr.replay(trace, jr.kpi(trace.kind, judged_by))
    assert watched == [(p.slot, p.verdict.value, p.baseline, p.counts) for p in result.polls]
    assert ended is not None
    assert (ended.status is RolloutStatus.rolled_back) == result.rolled_back, ended.status
