"""Judge replay (issue 12): every recorded trace through both judges, as the watch judges them.

The traces are tests/data/judge_traces/ (recorded on the real rig by `python -m
bench.record_traces`); the replay is `tests.support.judge_replay`, which the tests use too. No
server is needed: this section runs in well under a second.
"""

from __future__ import annotations

from statistics import median
from typing import Any

from scipy.stats import fisher_exact

from bot.domain.judging import POWER
from tests.support import judge_replay as jr

METHOD = (
    "Every trace in tests/data/judge_traces/ (one canary step each, recorded on the real rig by "
    "`python -m bench.record_traces`: demo containers behind HAProxy 2.6 under a steady "
    "loopback load, Prometheus queried with the built-in queries and the slots' response "
    "counters for the new version and the "
    "baseline every second) replayed through both judges poll by poll, as the watch judges a "
    "step (the step's samples so far, warm-up, `for`)"
)


def _ratio(trace: jr.Trace) -> float | None:
    """Median of the new version's judged values over the baseline's (what the KPI showed)."""
    judged = trace.polls[jr.WARMUP :]
    news = [n for n, _ in judged if n is not None]
    bases = [b for _, b in judged if b is not None]
    if not news or not bases or median(bases) == 0:
        return None
    return float(median(news) / median(bases))


def _counts(trace: jr.Trace) -> dict[str, Any] | None:
    """The requests and 5xx the load saw per version in the step, and how surely a test on
    those counts alone (Fisher's exact, one-sided) tells the new version fails more often: the
    most any judge of an error rate could know from this step."""
    if trace.kind != "error_rate":
        return None
    seen = trace.meta["traffic"]["served"]["by_version"]
    new, base = seen.get("2", {}), seen.get("1", {})
    if not new.get("requests") or not base.get("requests"):
        return None
    table = [
        [new["failed"], new["requests"] - new["failed"]],
        [base["failed"], base["requests"] - base["failed"]],
    ]
    p_value = float(fisher_exact(table, alternative="greater").pvalue)
    return {
        "new": f"{new['failed']}/{new['requests']}",
        "baseline": f"{base['failed']}/{base['requests']}",
        "exact_p": p_value,
    }


def _detectable(trace: jr.Trace) -> dict[str, Any] | None:
    """What the step could detect (error-rate traces): the smallest factor the count judge's
    test catches with its power, sized at the baseline's injected failure ratio (the rig's
    real one) and at the step's own (what the judge's explanation says), and the step the
    goal's factor would need at this traffic."""
    real = jr.step_detectable(trace, injected=True)
    seen = jr.step_detectable(trace)
    if real is None or seen is None:
        return None
    return {
        "new_served": real.new_served,
        "baseline_served": real.baseline_served,
        "seconds": real.seconds,
        "baseline_ratio": real.baseline_ratio,
        "factor": real.factor,
        "step_baseline_ratio": seen.baseline_ratio,
        "step_factor": seen.factor,
        "goal_seconds": jr.seconds_for_goal(trace),
        "within": jr.detectable_in_step(trace),
    }


def run() -> dict[str, Any]:
    traces = jr.load_traces()
    if not traces:
        raise FileNotFoundError(f"no traces in {jr.TRACES_DIR}: run python -m bench.record_traces")
    replays = jr.replay_all(traces)
    by_trace: dict[str, dict[str, Any]] = {}
    for r in replays:
        row = by_trace.setdefault(
            r.trace.name,
            {
                "name": r.trace.name,
                "kind": r.trace.kind,
                "level": r.trace.level,
                "rate": r.trace.rate,
                "scenario": r.trace.scenario,
                "label": r.trace.label,
                "factor": r.trace.factor,
                "polls": len(r.trace.polls),
                "median_ratio": _ratio(r.trace),
                "failed_requests": _counts(r.trace),
                "detectable": _detectable(r.trace),
            },
        )
        row[r.judge] = {"rolled_back_at": r.rolled_back_at, "detail": r.detail}
    return {
        "method": METHOD,
        "config": {
            "warmup": jr.WARMUP,
            "for": jr.FOR_POLLS,
            "threshold_max": jr.THRESHOLD_MAX,
            "tolerance": jr.TOLERANCE,
            "confidence": jr.CONFIDENCE,
            "min_samples": jr.MIN_SAMPLES,
            "goal_factor": jr.GOAL_FACTOR,
            "power": POWER,
            "healthy_scenarios": list(jr.HEALTHY_SCENARIOS),
        },
        "levels": {t.level: t.rate for t in traces},
        "traces": list(by_trace.values()),
        "summary": jr.summary(replays),
        "goals": jr.goals(replays),
    }
