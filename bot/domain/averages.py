"""What HAProxy's running response-time average says about the responses of one span of time.

HAProxy 2.6 keeps no per-server histogram and no cumulative response time. It keeps, per server
slot, a running sum S of response times in whole milliseconds (`stream_update_time_stats`,
`swrate_add_dynamic`): for a slot's first 512 requests every response is added as it is
(S += v), after that it decays (S = S - S/512 + v); the exporter's
`haproxy_server_response_time_average_seconds` is ceil(S / 512) ms. So a fresh slot reads
served/512 of its real figure (the built-in query scales that back: `bot.domain.kpis`), and a
slot that has served for a while reads an exponentially weighted average of its last ~512
responses.

Compared as they are, the two versions' figures span different responses: a new version's
scaled figure is the mean of everything it has served, the baseline's mostly the last 512, so a
spike both versions share weighs several times more on the new one (issue 12: the recorded
shared spike at 20 req/s rolled a healthy canary back). `interval_mean` compares like with
like: from two readings of the same slot (its average and its response counter at each poll)
it recovers the mean response time of the responses served *between* those polls, with the
same weight per response on either version (within one poll interval HAProxy's own decay
weighs the interval's responses by at most 1 - k/512 apart, k the interval's responses); and
`span`, over several polls, each interval's mean weighted by its responses, with how far that
mean may be off.

The 1 ms rounding (up) of the exported average is the limit: a reading is taken as the middle
of what it can mean (S/512 within the millisecond below it), and the error left on a span's
mean is about 512 ms / (responses in the span), e.g. ±5 ms after 100 responses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

WINDOW = 512
"""Responses HAProxy's running average spans (TIME_STATS_SAMPLES); a fresh slot's first WINDOW
responses are summed without decay."""

QUANTUM = 0.001
"""The exported average's resolution, seconds (HAProxy keeps whole milliseconds, rounded up)."""


@dataclass(frozen=True)
class AverageReading:
    """One slot at one poll: the built-in latency_average's value (HAProxy's average scaled by
    WINDOW / clamp(served, 1, WINDOW), seconds) and the slot's response counter."""

    value: float
    served: float


def _running_sum(reading: AverageReading) -> float:
    """HAProxy's running sum S (seconds), the middle of what the rounded average can mean."""
    average = reading.value * min(max(reading.served, 1.0), WINDOW) / WINDOW
    if average <= 0:
        return 0.0  # an average of 0 ms is an exact sum of 0 (no response yet)
    return WINDOW * max(average - QUANTUM / 2, 0.0)


@dataclass(frozen=True)
class _Interval:
    mean: float  # seconds
    served: float
    weight: float  # what HAProxy's sum weighs the interval's responses by, in all
    kept: float  # what is left of the sum before it


def _interval(before: AverageReading, after: AverageReading) -> _Interval | None:
    served = after.served - before.served
    if served <= 0:
        return None
    # The first WINDOW responses of a slot are summed as they are; later ones decay the sum.
    summed = min(max(min(after.served, WINDOW) - before.served, 0.0), served)
    kept = (1 - 1 / WINDOW) ** (served - summed)  # what is left of the earlier sum
    # S_after = S_before * kept + (the interval's responses, weighted as HAProxy weighs them),
    # and those weights add up to summed * kept + WINDOW * (1 - kept).
    weight = summed * kept + WINDOW * (1 - kept)
    mean = (_running_sum(after) - _running_sum(before) * kept) / weight
    return _Interval(max(mean, 0.0), served, weight, kept)


def interval_mean(before: AverageReading, after: AverageReading) -> tuple[float, float] | None:
    """The mean response time of the responses served between two readings of one slot, and
    how many they are; None when it served none (or the counter went back: a proxy restart)."""
    interval = _interval(before, after)
    return None if interval is None else (interval.mean, interval.served)


ROUNDING_VARIANCE = (WINDOW * QUANTUM) ** 2 / 12
"""Variance of a running sum read back from its exported average (seconds²): rounded up to the
millisecond and read as the middle of what it can mean, the sum is off by up to WINDOW *
QUANTUM / 2 either way, evenly."""


@dataclass(frozen=True)
class Span:
    """The responses one slot served over several polls: their mean response time, how many,
    and how far that mean may be from the slot's true mean (`variance`, seconds²)."""

    mean: float
    served: float
    intervals: int  # poll intervals with responses: the spread below is estimated from them
    variance: float


def span(readings: Sequence[AverageReading]) -> Span | None:
    """The span from the first reading to the last (None: no response in it, or a counter that
    went back: a proxy restart). The mean weighs every response alike.

    How far it may be off has two parts. The responses' own spread: a poll interval's mean of
    n responses varies as sigma² / n, so sigma² is estimated from how the intervals' means
    spread about the span's, weighted by n; the mean's share is sigma² / served. At low
    traffic HAProxy's rounding spreads the intervals' means too (about 51 ms either way for
    10 responses), so the estimate errs on the side of caution there: subtracting the
    rounding's known share instead left a difference of two noisy figures, too small as often
    as too large, and a healthy version judged against too small a one is rolled back. And
    the rounding of the readings themselves, carried through to the mean: between two
    intervals one reading's error mostly cancels, so it is about the first and last readings'
    alone, shrinking as 1 / served².
    """
    intervals: list[_Interval] = []
    errors = [0.0] * len(readings)  # each reading's rounding, as it moves the span's sum
    for index, (before, after) in enumerate(pairwise(readings)):
        if after.served < before.served:
            return None
        interval = _interval(before, after)
        if interval is None:
            continue
        intervals.append(interval)
        # served * mean = served * (S_after - S_before * kept) / weight
        errors[index + 1] += interval.served / interval.weight
        errors[index] -= interval.served * interval.kept / interval.weight
    served = sum(i.served for i in intervals)
    if served <= 0:
        return None
    mean = sum(i.mean * i.served for i in intervals) / served
    rounding = ROUNDING_VARIANCE * sum(e * e for e in errors) / served**2
    spread = 0.0
    if len(intervals) > 1:
        dispersion = sum(i.served * (i.mean - mean) ** 2 for i in intervals)
        spread = dispersion / (len(intervals) - 1) / served
    return Span(mean, served, len(intervals), spread + rounding)
