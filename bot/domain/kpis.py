"""KPI readings and tolerances: a value per poll, and the verdict on it.

A source answers one number or "no data". Errors, timeouts, empty results and NaN are all no
data, handled by the KPI's `no_data` policy, so a broken query is never healthy by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bot.domain.config import Kpi, Traffic
from bot.domain.models import TrafficSplit
from bot.domain.traffic import selector

# HAProxy's exporter counts every response per server slot, by class (1xx ... 5xx, other).
_RESPONSES = "haproxy_server_http_responses_total"
BUILTIN_QUERIES = {
    "error_rate": (
        "sum(rate(" + _RESPONSES + '{{version},code="5xx"}[{window}])) '
        "/ sum(rate(" + _RESPONSES + "{{version}}[{window}]))"
    ),
    # HAProxy 2.6 keeps no per-server histogram: this running average is the honest figure it
    # gives. On a fresh slot it starts at 0 and climbs over the first 512 responses (measured,
    # tests/data/judge_traces): a new version reads low until then (issue 12 note).
    # the honest figure it gives.
    "latency_average": "max(haproxy_server_response_time_average_seconds{{version}})",
}


def kpi_query(
    kpi: Kpi, traffic: Traffic | None, split: TrafficSplit | None, *, baseline: bool = False
) -> str | None:
    """The query to run for this poll: a builtin's, or the KPI's own, with `{version}` and
    `{baseline}` replaced by the two versions' label matchers. None when it names a baseline
    and none runs (a first deploy, or the baseline was retired)."""
    query = kpi.query
    if kpi.builtin is not None:
        query = BUILTIN_QUERIES[kpi.builtin].replace("{window}", f"{kpi.window:g}s")
    if traffic is None or split is None:
        return query
    if baseline:
        # The same KPI of the baseline: its series where the new version's would be.
        if split.baseline_port is None or split.baseline_retired:
            return None
        query = query.replace("{version}", selector(traffic, split.baseline_port))
    query = query.replace("{version}", selector(traffic, split.port))
    if "{baseline}" in query:
        if split.baseline_port is None or split.baseline_retired:
            return None
        query = query.replace("{baseline}", selector(traffic, split.baseline_port))
    return query


@dataclass(frozen=True)
class Reading:
    """What a source answered: a value, or None with the reason there was no data."""

    value: float | None
    detail: str = ""
    config_error: bool = False  # the query itself is wrong (e.g. returns several series)
    unanswered: bool = False  # the source did not answer (down, timeout, 5xx, not its JSON)


class Verdict(StrEnum):
    ok = "ok"
    breach = "breach"
    no_data = "no_data"  # counted as breaching (policy: breach)
    ignored = "ignored"  # no data, skipped (policy: ignore)
    warmup = "warmup"
    not_enough_data = "not_enough_data"  # judge: compare, too few samples yet: not counted


def judge(kpi: Kpi, reading: Reading, slot: int, warmup_polls: int) -> Verdict:
    """The verdict on one poll; warm-up polls are recorded, not judged."""
    if slot <= warmup_polls:
        return Verdict.warmup
    if reading.value is None:
        return Verdict.no_data if kpi.no_data == "breach" else Verdict.ignored
    return Verdict.breach if kpi.breaches(reading.value) else Verdict.ok


def next_streak(streak: int, verdict: Verdict) -> int:
    """Polls in a row beyond tolerance; a skipped poll neither counts nor resets."""
    if verdict in (Verdict.breach, Verdict.no_data):
        return streak + 1
    if verdict is Verdict.ok:
        return 0
    return streak
