"""Summaries of measured samples: percentiles, ratios against a floor, growth between scales."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linearly interpolated between the closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """n, min, p50, p90, p99, max and mean of samples (NaN when there are none)."""
    if not values:
        nan = math.nan
        return {"n": 0, "min": nan, "p50": nan, "p90": nan, "p99": nan, "max": nan, "mean": nan}
    return {
        "n": len(values),
        "min": min(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def ratio(value: float, floor: float) -> float:
    """value / floor, NaN when either is missing or the floor is zero."""
    if not (math.isfinite(value) and math.isfinite(floor)) or floor <= 0:
        return math.nan
    return value / floor


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan
