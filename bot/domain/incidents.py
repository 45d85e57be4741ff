"""Incidents: a KPI breach, what the bot did about it, and the analysis people write."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from bot.domain.models import Provenance

WHYS = (1, 2, 3, 4, 5)
ROOT_CAUSE = "root cause"
FAILING_TEST = "failing test"
# The analysis /resume waits for, in the order people are asked for it.
ANALYSIS_FIELDS = (*(f"why {n}" for n in WHYS), ROOT_CAUSE, FAILING_TEST)


_URL = re.compile(r"https?://[^\s<>|]+")


def failing_test_url(text: str) -> str | None:
    """The first http(s) URL with a host in a plain-text answer, or None."""
    match = _URL.search(text)
    if match is None:
        return None
    url = match.group(0)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return url


@dataclass(frozen=True)
class ParsedAnswers:
    """What one message says: answers by field (ANALYSIS_FIELDS), and what was malformed."""

    answers: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def is_answer(self) -> bool:
        return bool(self.answers or self.problems)


@dataclass(frozen=True)
class AnalysisChange:
    """What one message or form did to an incident's analysis, and who wrote it."""

    user: str
    recorded: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # malformed answers, explained


class KpiSample(BaseModel):
    """One poll of one KPI during a watch."""

    at: float
    slot: int
    kpi: str
    value: float | None  # None: no data (error, empty result, NaN)
    verdict: str  # ok | breach | no_data | warmup | ignored | not_enough_data
    detail: str = ""
    baseline: float | None = None  # judge: compare: the baseline's value at the same poll
    step: int = 0  # behind a proxy: the canary step (index) the poll was in
    # judge: compare on a built-in: the slots' response counters at this poll, (new failed,
    # new served, baseline failed, baseline served); the error rate's step counts are the
    # difference from its first judged poll's (bot.domain.judging.compare_counters), the
    # latency's same span is measured from there (compare_averages).
    counts: tuple[float, float, float, float] | None = None

    @property
    def breaching(self) -> bool:
        return self.verdict in ("breach", "no_data")


class Incident(BaseModel):
    id: str
    pipeline: str
    channel: str
    rollout_id: str
    bad_version: str
    restored_version: str | None = None
    rollback_rollout_id: str | None = None
    kpi: str
    query: str
    tolerance: str
    judgement: str = ""  # judge: compare: the decision, explained (medians, effect, p-value)
    kpi_max: float | None = None
    kpi_min: float | None = None
    for_polls: int = 1
    auto_rollback: bool = True
    samples: list[KpiSample] = Field(default_factory=list)
    # The KPI from before the deploy until the breach (a Prometheus range query), for the chart.
    history: list[tuple[float, float]] = Field(default_factory=list)
    opened_at: float
    live_at: float | None = None
    # The OCI labels of the bad version and of the last good one (the breach alert names the
    # commits between them).
    bad_provenance: Provenance | None = None
    good_provenance: Provenance | None = None
    actions: list[str] = Field(default_factory=list)
    alert_ts: str | None = None
    thread_ts: str | None = None
    whys: dict[int, str] = Field(default_factory=dict)
    root_cause: str = ""
    failing_test: str = ""
    # Who gave each answer (field -> user), and where it came from (field -> message ts, or
    # "modal"), so an edited thread message replaces exactly what it had answered.
    answered_by: dict[str, str] = Field(default_factory=dict)
    answer_sources: dict[str, str] = Field(default_factory=dict)
    rollback_confirmed_by: str = ""
    rollback_confirmed_at: float | None = None
    resumed_by: str = ""
    resumed_at: float | None = None
    force_reason: str = ""

    def answer(self, field: str) -> str:
        """The recorded answer to one of ANALYSIS_FIELDS ("" when missing)."""
        if field == ROOT_CAUSE:
            return self.root_cause
        if field == FAILING_TEST:
            return self.failing_test
        return self.whys.get(_why_number(field), "")

    def set_answer(self, field: str, value: str, *, user: str, source: str) -> None:
        """Record (or, with an empty value, clear) one answer."""
        if field == ROOT_CAUSE:
            self.root_cause = value
        elif field == FAILING_TEST:
            self.failing_test = value
        elif value:
            self.whys[_why_number(field)] = value
        else:
            self.whys.pop(_why_number(field), None)
        if value:
            self.answered_by[field] = user
            self.answer_sources[field] = source
        else:
            self.answered_by.pop(field, None)
            self.answer_sources.pop(field, None)

    def missing(self) -> list[str]:
        return [field for field in ANALYSIS_FIELDS if not self.answer(field).strip()]

    @property
    def awaiting_rollback(self) -> bool:
        """Auto-rollback is off and nobody has confirmed the rollback yet."""
        return (
            not self.auto_rollback
            and self.rollback_rollout_id is None
            and self.restored_version is not None
        )

    def breaching_samples(self) -> list[KpiSample]:
        """The polls that made the breach: the last run of breaching samples."""
        run: list[KpiSample] = []
        for sample in self.samples:
            run = [*run, sample] if sample.breaching else ([] if sample.verdict == "ok" else run)
        return run


def _why_number(field: str) -> int:
    number = int(field.removeprefix("why "))
    if number not in WHYS:
        raise ValueError(f"no such why: {field!r}")
    return number
