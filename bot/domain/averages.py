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
shared spike at 20 req/s rolled a healthy canary back). `span_mean` compares like with like:
from two readings of the same slot (its average and its response counter at each poll) it
recovers the mean response time of the responses served *between* those polls, with the same
weight per response on either version (within one poll interval HAProxy's own decay weighs
the interval's responses by at most 1 - k/512 apart, k the interval's responses); and over
several polls, each interval's mean weighted by its responses.

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


def interval_mean(before: AverageReading, after: AverageReading) -> tuple[float, float] | None:
    """The mean response time of the responses served between two readings of one slot, and
    how many they are; None when it served none (or the counter went back: a proxy restart)."""
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
    return max(mean, 0.0), served


def span_means(readings: Sequence[AverageReading]) -> list[tuple[float, float] | None]:
    """At each reading after the first: the mean response time over the responses served
    since the first (each poll interval's mean weighted by its responses) and how many, None
    while there are none. A counter that went back (a proxy restart) ends the list there."""
    means: list[tuple[float, float] | None] = []
    total = served = 0.0
    for before, after in pairwise(readings):
        if after.served < before.served:
            break
        interval = interval_mean(before, after)
        if interval is not None:
            mean, count = interval
            total += mean * count
            served += count
        means.append((total / served, served) if served > 0 else None)
    return means
