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
_OVERLAPPING = (
    "the 10 s rate windows polled every 1 s share 9 s each, so one failed request is in ~10 "
    "polls' samples, which the rank test counts as independent; with a baseline window at 0 "
    "every effect is infinite (bot/domain/judging.py): needs a decision on the judge"
)
_RAMP = (
    "HAProxy 2.6's response-time average on a fresh slot starts at 0 and climbs linearly over "
    "its first 512 responses (51 s at 10 req/s per version, longer than the 24 s step): the "
    "new version reads {ratio} of the baseline's latency (built-in latency_average, "
    "bot/domain/kpis.py): needs a decision on the built-in"
)
_AT_THE_FLOOR = (
    "a 1.5x regression sits exactly on the +50% tolerance (compare needs more than +50%): {what}; "
    "the goal's factor and the tolerance need a decision"
)
KNOWN = {
    "error_rate-low-healthy": "false rollback at poll 14 on 1 failed request of 240 (the "
    "baseline 2 of 240; exact test p=0.88): " + _OVERLAPPING,
    "error_rate-high-shared_spike": "false rollback at poll 8, before the spike (polls 10-12): "
    "the new version's first 8 s ran at about 2% against the baseline's 0.6% (whole step 55 of "
    "1797 against 53 of 1802 failed) and the rank test gave p=0.001: " + _OVERLAPPING,
    "error_rate-low-regression-2x": "the new version failed 1 request of 240, the baseline 3 of "
    "241 (exact test p=0.94): at 20 req/s one 24 s step holds too few failures for any judge; "
    "the goal at this traffic (or the step's length) needs a decision",
    "error_rate-high-regression-1.5x": _AT_THE_FLOOR.format(
        what="the step's medians differed by +20% to +54% (41 of 1799 against 21 of 1803 "
        "failed); worse first at poll 24, the last, one short of `for` 2"
    ),
    "latency-high-regression-1.5x": _AT_THE_FLOOR.format(
        what="the proxy saw 1.47x (median 85 ms against 58 ms: the recorder's estimate of the "
        "demo's own time per request was 2 ms short), kept as +47%"
    ),
    "latency-low-regression-1.5x": _RAMP.format(ratio="0.39"),
    "latency-low-regression-2x": _RAMP.format(ratio="0.53"),
    "latency-low-regression-3x": _RAMP.format(ratio="0.75"),
}


def _by(predicate: Any) -> list[Any]:
    return [
        pytest.param(
            t,
            id=t.name,
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN[t.name])] if t.name in KNOWN else [],
        )
        for t in TRACES
        if predicate(t)
    ]


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
    """A few traces each judge keeps and rolls back, and one with no data mid-step if any."""
    chosen: dict[str, tuple[jr.Trace, str]] = {}
    for result in jr.replay_all(TRACES):
        key = f"{result.judge}-{'rolled-back' if result.rolled_back else 'kept'}"
        chosen.setdefault(key, (result.trace, result.judge))
        if any(new is None for new, _ in result.trace.polls[jr.WARMUP :]):
            chosen.setdefault(f"{result.judge}-no-data", (result.trace, result.judge))
    return [pytest.param(t, j, id=f"{key}-{t.name}") for key, (t, j) in sorted(chosen.items())]


def _watched_rig(client: redis.Redis, trace: jr.Trace, judged_by: str) -> Rig:
    config = traffic_pipeline(strategy="canary", steps=[50, 100], step_duration="5m")
    kpi = jr.kpi(trace.kind, judged_by).model_dump(by_alias=True, exclude_none=True)
    kpi.pop("builtin")
    kpi.update(query="kpi{{version}}", source="scripted")
    web = config["pipelines"]["web"]
    web["kpis"] = [kpi]
    web["watch"] = {"interval": "1s", "duration": "2s", "warmup": jr.WARMUP}
    return Rig(client, config)


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
        for new, base in trace.polls:
            poll_both(rig, canary.id, new, base)  # type: ignore[arg-type]
            if rig.store.rollout(canary.id).status is not RolloutStatus.live:  # type: ignore[union-attr]
                break
        watched = [(s.slot, s.verdict, s.baseline) for s in rig.store.samples(canary.id)]
        ended = rig.store.rollout(canary.id)
        if ended is not None and ended.status is RolloutStatus.rolled_back:
            # The chart is drawn once the rollback is over, on a thread of its own.
            rig.wait_for(lambda: bool(rig.notifier.charts), "the breach chart posted")
    finally:
        rig.runner.shutdown(wait=True)
    result = jr.replay(trace, jr.kpi(trace.kind, judged_by))
    assert watched == [(p.slot, p.verdict.value, p.baseline) for p in result.polls]
    assert ended is not None
    assert (ended.status is RolloutStatus.rolled_back) == result.rolled_back, ended.status
