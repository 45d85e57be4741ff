"""Recorded KPI traces replayed through both judges, poll by poll, as the watch judges them.

A trace (tests/data/judge_traces/*.json, written by `python -m bench.record_traces`) is one
canary step recorded on the real rig: at each poll, the new version's and the baseline's value
of one built-in KPI as Prometheus answered it (None: no data). The replay is the watch's
`_poll_kpis`/`_compare` without Redis: slot n is the n-th poll of the step, the first
`WARMUP` are recorded, not judged (`bot.domain.kpis.judge`); a compare KPI judges this poll's
pair with the step's earlier ones that have both values (`bot.domain.judging.compare`), and
only when the threshold part said ok; the streak is `next_streak`'s, and `for` polls in a row
beyond tolerance roll back (the replay stops there, as the watch does).
tests/bot/test_judge_replay.py checks this against the real Watcher on Redis.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.domain.config import Kpi
from bot.domain.judging import (
    Comparison,
    Counts,
    Decision,
    Detectable,
    compare,
    compare_averages,
    compare_counters,
    detectable,
    look_alpha,
    seconds_to_detect,
)
from bot.domain.kpis import Reading, Verdict, judge, next_streak

TRACES_DIR = Path(__file__).resolve().parent.parent / "data" / "judge_traces"

WARMUP = 2  # watch.warmup: polls recorded, not judged
FOR_POLLS = 2  # `for`: polls in a row beyond tolerance, both judges
THRESHOLD_MAX = {"error_rate": 0.02, "latency": 0.1}
"""The threshold judge's fixed `max`: twice the baseline's level on the rig (1% of requests
failing; 50 ms of delay plus the demo's own few ms), a typical fixed tolerance."""
TOLERANCE, CONFIDENCE, MIN_SAMPLES = 0.25, 0.95, 5
"""The compare KPI's floor is below the goal's factor: a tolerance says what does not matter
(worse means *more* than it), so a KPI tolerating +50% does not promise to catch a 1.5x
regression, which would sit on its floor and be caught by chance."""
JUDGES = ("threshold", "compare")
HEALTHY_SCENARIOS = ("healthy", "shared_spike")  # the goal: no false rollback on these
GOAL_FACTOR = 1.5  # the goal: every regression this big or bigger caught within one step


@dataclass(frozen=True)
class Trace:
    name: str
    kind: str  # error_rate | latency
    scenario: str  # healthy, shared_spike, one_scrape_spike, slow_burn, regression-<f>x
    label: str  # healthy | regression
    factor: float
    level: str  # low | high
    rate: float  # requests/s through the proxy, both versions
    polls: tuple[tuple[float | None, float | None], ...]  # (new, baseline) per poll
    # the slots' response counters per poll (new failed, new served, baseline failed, baseline
    # served), None where Prometheus had one of them not
    counters: tuple[tuple[float, float, float, float] | None, ...]
    meta: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def interval(self) -> float:
        """Seconds between polls (`watch.interval`)."""
        return float(self.meta.get("interval_seconds") or 1.0)

    @property
    def replayable_by_compare(self) -> bool:
        """Both built-ins are compared with the slots' counters: a trace recorded before the
        recorder kept them cannot be replayed through it."""
        return any(c is not None for c in self.counters)

    @property
    def fixed_regression(self) -> bool:
        return self.scenario.startswith("regression-")


def load_trace(path: Path) -> Trace:
    raw = json.loads(path.read_text())
    return Trace(
        name=raw["name"],
        kind=raw["kind"],
        scenario=raw["scenario"],
        label=raw["label"],
        factor=float(raw["factor"]),
        level=raw["traffic"]["level"],
        rate=float(raw["traffic"]["rate"]),
        polls=tuple((p["new"], p["baseline"]) for p in raw["polls"]),
        counters=tuple(_counters(p) for p in raw["polls"]),
        meta=raw,
    )


def _counters(poll: dict[str, Any]) -> tuple[float, float, float, float] | None:
    read = poll.get("counters")
    if read is None:
        return None
    values = [read[side][name] for side in ("new", "baseline") for name in ("failed", "responses")]
    if any(v is None for v in values):
        return None
    return values[0], values[1], values[2], values[3]


def load_traces(directory: Path = TRACES_DIR) -> list[Trace]:
    return [load_trace(path) for path in sorted(directory.glob("*.json"))]


def kpi(kind: str, judged_by: str) -> Kpi:
    """The KPI a judge replays a trace of this kind with."""
    fields: dict[str, Any] = {
        "name": "errors" if kind == "error_rate" else "latency",
        "builtin": "error_rate" if kind == "error_rate" else "latency_average",
        "for": FOR_POLLS,
    }
    if judged_by == "threshold":
        fields["max"] = THRESHOLD_MAX[kind]
    else:
        fields.update(
            judge="compare", tolerance=TOLERANCE, confidence=CONFIDENCE, min_samples=MIN_SAMPLES
        )
    return Kpi.model_validate(fields)


@dataclass(frozen=True)
class Poll:
    slot: int
    value: float | None
    baseline: float | None  # kept only when the comparison read it, as the watch keeps it
    verdict: Verdict
    detail: str = ""
    counts: tuple[float, float, float, float] | None = None  # kept as the watch keeps them


@dataclass(frozen=True)
class Replay:
    trace: Trace
    judge: str
    polls: tuple[Poll, ...]
    rolled_back_at: int | None  # the slot (poll of the step) that rolled back, None: kept

    @property
    def rolled_back(self) -> bool:
        return self.rolled_back_at is not None

    @property
    def detail(self) -> str:
        return self.polls[-1].detail if self.polls else ""


def replay(trace: Trace, kpi_: Kpi, warmup: int = WARMUP) -> Replay:
    """One trace through one KPI's judge, poll by poll, until it rolls back or the step ends."""
    polls: list[Poll] = []
    streak = 0
    for slot, ((value, base), counters) in enumerate(
        zip(trace.polls, trace.counters, strict=True), start=1
    ):
        reading = Reading(value, "" if value is not None else "no data")
        verdict = judge(kpi_, reading, slot, warmup)
        kept_base: float | None = None
        kept_counts: tuple[float, float, float, float] | None = None
        detail = reading.detail
        if kpi_.judge == "compare" and verdict is Verdict.ok:
            verdict, kept_base, detail, kept_counts = _compare(
                kpi_, value, base, counters, polls, slot, trace.interval, len(trace.polls)
            )
        polls.append(Poll(slot, value, kept_base, verdict, detail, kept_counts))
        streak = next_streak(streak, verdict)
        if streak >= kpi_.for_polls:
            return Replay(trace, kpi_.judge, tuple(polls), slot)
    return Replay(trace, kpi_.judge, tuple(polls), None)


def _compare(
    kpi_: Kpi,
    value: float | None,
    base: float | None,
    counters: tuple[float, float, float, float] | None,
    earlier: Sequence[Poll],
    slot: int,
    interval: float,
    steps: int,
) -> tuple[Verdict, float | None, str, tuple[float, float, float, float] | None]:
    no_data = Verdict.no_data if kpi_.no_data == "breach" else Verdict.ignored
    # The trace is one step: this look's place in it, as the watch computes it.
    fraction = (len(earlier) + 1) / max(1, steps)
    if base is None:
        return no_data, None, f"{kpi_.name}: the baseline has no data", None
    assert value is not None
    comparison: Comparison
    if kpi_.builtin is not None and counters is None:
        return no_data, None, f"{kpi_.name}: a response counter has no data", None
    if kpi_.builtin == "error_rate":
        assert counters is not None
        counted = [p for p in earlier if p.counts is not None]
        origin = counted[0] if counted else None
        comparison = compare_counters(
            kpi_,
            origin.counts if origin is not None else None,
            counters,
            len(counted),
            (slot - origin.slot) * interval if origin is not None else None,
            fraction,
        )
    elif kpi_.builtin == "latency_average":
        assert counters is not None
        averaged = [
            (p.value, p.counts[1], p.baseline, p.counts[3])
            for p in earlier
            if p.counts is not None and p.value is not None and p.baseline is not None
        ]
        comparison = compare_averages(
            kpi_, [*averaged, (value, counters[1], base, counters[3])], fraction
        )
    else:
        pairs = [
            (p.value, p.baseline) for p in earlier if p.value is not None and p.baseline is not None
        ]
        news = [v for v, _ in pairs if v is not None] + [value]
        bases = [b for _, b in pairs if b is not None] + [base]
        comparison = compare(kpi_, news, bases, fraction)
    verdict = {
        Decision.worse: Verdict.breach,
        Decision.no_worse: Verdict.ok,
        Decision.not_enough_data: Verdict.not_enough_data,
    }[comparison.decision]
    return verdict, base, comparison.explain(kpi_), counters


def step_counts(trace: Trace) -> tuple[Counts, Counts, float] | None:
    """The responses the step counted after warm-up, as the count judge counts them: from its
    first judged poll to its last (new, baseline, and the seconds between)."""
    counted = [
        (slot, c)
        for slot, c in enumerate(trace.counters, start=1)
        if slot > WARMUP and c is not None
    ]
    if len(counted) < 2:
        return None
    (first, origin), (last, end) = counted[0], counted[-1]
    new_failed, new_served, base_failed, base_served = (
        round(b - a) for a, b in zip(origin, end, strict=True)
    )
    return (
        Counts(new_failed, new_served),
        Counts(base_failed, base_served),
        (last - first) * trace.interval,
    )


def step_detectable(trace: Trace, *, injected: bool = False) -> Detectable | None:
    """What the whole step could detect (error-rate traces: a counted KPI): sized at the
    step's own baseline failure ratio, as the compare KPI's explanation says it at the step's
    last poll, or (`injected`) at the ratio the recorder injected, the baseline's real one."""
    counted = step_counts(trace) if trace.kind == "error_rate" else None
    if counted is None:
        return None
    new, base, seconds = counted
    ratio = injected_baseline_ratio(trace) if injected else None
    kpi_ = kpi(trace.kind, "compare")
    # Sized at the level of the step's last look, as the watch sizes it.
    at_end = look_alpha(kpi_, 1.0)
    return detectable(kpi_, new, base, seconds, baseline_ratio=ratio, alpha=at_end)


def injected_baseline_ratio(trace: Trace) -> float:
    """The baseline's failure ratio the recorder set at the step's start (failures per
    million requests)."""
    return float(trace.meta["injected_per_poll"]["changes"][0]["baseline"]) / 1e6


def seconds_for_goal(trace: Trace) -> float | None:
    """The step length at this trace's traffic that catches the goal's factor with the
    detectable power (error-rate traces), at the baseline's injected failure ratio."""
    counted = step_counts(trace) if trace.kind == "error_rate" else None
    if counted is None:
        return None
    new, base, seconds = counted
    ratio = injected_baseline_ratio(trace)
    kpi_ = kpi(trace.kind, "compare")
    return seconds_to_detect(
        kpi_,
        ratio * GOAL_FACTOR,
        new,
        base,
        seconds,
        baseline_ratio=ratio,
        alpha=look_alpha(kpi_, 1.0),
    )


def detectable_in_step(trace: Trace) -> bool:
    """Whether the step could detect this trace's regression: its factor at least what a step
    of its responses detects at the baseline's real (injected) failure ratio. A KPI judged
    without counts (latency) has no such bound here: always."""
    found = step_detectable(trace, injected=True)
    if found is None:
        return trace.kind != "error_rate"
    return found.factor is not None and trace.factor >= found.factor


def replay_all(traces: Iterable[Trace]) -> list[Replay]:
    return [
        replay(t, kpi(t.kind, judged_by))
        for t in traces
        for judged_by in JUDGES
        if judged_by == "threshold" or t.replayable_by_compare
    ]


# The summary the bench prints and the README shows -------------------------------------------


def _median(values: Sequence[int]) -> float | None:
    return float(statistics.median(values)) if values else None


def summary(replays: Sequence[Replay]) -> dict[str, Any]:
    """Per judge: false rollbacks, regressions caught per factor, median polls to rollback."""
    out: dict[str, Any] = {}
    factors = sorted({r.trace.factor for r in replays if r.trace.fixed_regression})
    for judged_by in JUDGES:
        mine = [r for r in replays if r.judge == judged_by]
        healthy = [r for r in mine if r.trace.scenario in HEALTHY_SCENARIOS]
        spikes = [r for r in mine if r.trace.scenario == "one_scrape_spike"]
        fixed = [r for r in mine if r.trace.fixed_regression]
        burns = [r for r in mine if r.trace.scenario == "slow_burn"]
        caught = [r for r in fixed + burns if r.rolled_back]
        out[judged_by] = {
            "false_rollbacks": {
                "healthy_and_shared": _count(healthy),
                "one_scrape_spike": _count(spikes),
            },
            "caught": {
                f"{f:g}x": _count([r for r in fixed if r.trace.factor == f]) for f in factors
            }
            | {"slow_burn": _count(burns)},
            "median_polls_to_rollback": _median(
                [r.rolled_back_at for r in caught if r.rolled_back_at is not None]
            ),
        }
    return out


def _count(replays: Sequence[Replay]) -> dict[str, Any]:
    return {
        "rolled_back": sum(r.rolled_back for r in replays),
        "of": len(replays),
        "traces": [r.trace.name for r in replays if r.rolled_back],
    }


def goals(replays: Sequence[Replay]) -> dict[str, Any]:
    """Issue 12's goals for the compare judge, on the recorded traces."""
    compared = [r for r in replays if r.judge == "compare"]
    false = [r for r in compared if r.trace.scenario in HEALTHY_SCENARIOS and r.rolled_back]
    due = [r for r in compared if r.trace.fixed_regression and r.trace.factor >= GOAL_FACTOR]
    missed = [r for r in due if not r.rolled_back]
    detectable_due = [r for r in due if detectable_in_step(r.trace)]
    detectable_missed = [r for r in detectable_due if not r.rolled_back]
    return {
        "no_false_rollback": {"met": not false, "failed": [r.trace.name for r in false]},
        "regressions_caught": {
            "met": not missed,
            "factor_at_least": GOAL_FACTOR,
            "of": len(due),
            "missed": [r.trace.name for r in missed],
        },
        # The goal as a step at the rig's traffic can keep it: every regression of the goal's
        # factor or more that the step can detect (its factor at least the step's detectable
        # one) caught; the others listed with what their step could detect.
        "detectable_regressions_caught": {
            "met": not detectable_missed,
            "of": len(detectable_due),
            "missed": [r.trace.name for r in detectable_missed],
            "below_detectable": [
                {
                    "trace": r.trace.name,
                    "factor": r.trace.factor,
                    "detectable": _factor(step_detectable(r.trace, injected=True)),
                }
                for r in due
                if r not in detectable_due
            ],
        },
    }


def _factor(found: Detectable | None) -> float | None:
    return None if found is None else found.factor
