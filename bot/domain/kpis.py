"""KPI readings and tolerances: a value per poll, and the verdict on it.

A source answers one number or "no data". Errors, timeouts, empty results and NaN are all no
data, handled by the KPI's `no_data` policy, so a broken query is never healthy by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bot.domain.config import Kpi


@dataclass(frozen=True)
class Reading:
    """What a source answered: a value, or None with the reason there was no data."""

    value: float | None
    detail: str = ""
    config_error: bool = False  # the query itself is wrong (e.g. returns several series)


class Verdict(StrEnum):
    ok = "ok"
    breach = "breach"
    no_data = "no_data"  # counted as breaching (policy: breach)
    ignored = "ignored"  # no data, skipped (policy: ignore)
    warmup = "warmup"


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
