"""The judges on traces recorded from the real rig (issue 12, item 4): tests/data/judge_traces/,
replayed by tests/support/judge_replay.py (also `python -m bench --only judge`).

Goals, for the compare judge: no false rollback on a healthy or shared-noise trace; every
regression of 1.5x or more caught within its step. And the replay is the watch: a few traces
go through the real Watcher on Redis, poll for poll.
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


# Goals the recorded data does not meet, each for a reason someone has to decide on (issue 12;
# the numbers are the replay's, `python -m bench --only judge`). Strict: a fix makes them pass,
# and the mark has to go.
_FEW_FAILURES = (
    "at 20 req/s a 24 s step serves 210 requests per version after warm-up; the baseline "
    "fails 1%, so the step holds 2-3 failures: {what}; no count test can tell that from noise "
    "at 0.95 (the goal at this traffic, or a longer step, needs a decision)"
)
KNOWN = {
    "error_rate-low-regression-1.5x": _FEW_FAILURES.format(
        what="2 of 210 failed against 1 of 210 (Fisher exact p=0.5)"
    ),
    "error_rate-low-regression-2x": _FEW_FAILURES.format(
        what="5 of 210 against 2 of 210 (p=0.225)"
    ),
    "error_rate-low-regression-3x": _FEW_FAILURES.format(what="9 of 210 against 3 of 210 (p=0.07)"),
    # Re-recorded with counters on 2026-12-04 (a quiet machine, 1.3-1.5 of 2 cores busy).
    "error_rate-high-regression-1.5x": "at 150 req/s a 24 s step serves 1,575 requests per "
    "version after warm-up; at the baseline's 1% that is ~16 failures against ~24 at 1.5x, and "
    "even those expected counts give a one-sided Fisher exact p of 0.13: 23 of 1575 against 15 "
    "(p=0.126) here; no count test tells 1.5x from noise at 0.95 in one step at this traffic "
    "(the goal, or a longer step, needs a decision)",
    "error_rate-high-regression-2x": "at 150 req/s, 2x is caught at the expected counts (~32 "
    "failures of 1,575 against ~16: p=0.014) but this recording's step held 29 against 21 "
    "(p=0.159): the baseline's own noise ran high; one step at this traffic catches 2x only "
    "most of the time (a longer step, or the goal, needs a decision)",
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
    config = traffic_pipeline(strategy="canary", steps=[50, 100], step_duration="5m")
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
