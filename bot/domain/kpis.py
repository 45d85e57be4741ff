"""KPI readings and tolerances: a value per poll, and the verdict on it.

A source answers one number or "no data". Errors, timeouts, empty results and NaN are all no
data, handled by the KPI's `no_data` policy, so a broken query is never healthy by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bot.domain.averages import WINDOW
from bot.domain.config import Kpi, Traffic
from bot.domain.models import TrafficSplit
from bot.domain.traffic import selector

# HAProxy's exporter counts every response per server slot, by class (1xx ... 5xx, other).
_RESPONSES = "haproxy_server_http_responses_total"
_AVERAGED = WINDOW  # responses HAProxy's response-time average spans (bot.domain.averages)
BUILTIN_QUERIES = {
    "error_rate": (
        "sum(rate(" + _RESPONSES + '{{version},code="5xx"}[{window}])) '
        "/ sum(rate(" + _RESPONSES + "{{version}}[{window}]))"
    ),
    # HAProxy 2.6 keeps no per-server histogram: its running response-time average is the
    # honest figure it gives, but it averages over 512 responses from a start at 0, so on a
    # fresh slot it reads (served / 512) of the real figure until the slot has served 512
    # (measured: linear to the response, tests/data/judge_traces). Scaled back here by the
    # same scrape's response count, so a new version is not judged faster than it is. (Its
    # samples still span different responses on the two versions: `judge: compare` measures
    # both over the same span from these values and the response counters, judging.py.)
    "latency_average": (
        "max(haproxy_server_response_time_average_seconds{{version}}) * "
        + str(_AVERAGED)
        + " / clamp(sum("
        + _RESPONSES
        + "{{version}}), 1, "
        + str(_AVERAGED)
        + ")"
    ),
}

COUNTER_QUERIES = {
    "failed": "sum(" + _RESPONSES + '{{version},code="5xx"})',
    "responses": "sum(" + _RESPONSES + "{{version}})",
}
"""The slot's cumulative response counters (since HAProxy started): what `judge: compare`
counts the built-in error_rate on, and what says how many responses a slot's running average
has seen."""


def counter_query(
    name: str, traffic: Traffic | None, split: TrafficSplit | None, *, baseline: bool = False
) -> str | None:
    """One of COUNTER_QUERIES for the new version's slot or the baseline's; None without one."""
    if traffic is None or split is None:
        return None
    port = split.baseline_port if baseline else split.port
    if port is None or (baseline and split.baseline_retired):
        return None
    return COUNTER_QUERIES[name].replace("{version}", selector(traffic, port))


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
