"""The compare judge: the new version's samples against the baseline's, taken at the same polls
on the same traffic (DESIGN.md, "Judging").

A version is *worse* only when both hold: a one-sided Mann-Whitney U test says its samples are
shifted the bad way (p below 1 - confidence), and the effect passes the KPI's floor (the
relative `tolerance` and/or the `absolute` difference). The rank test discounts a single
outlying sample and a shift both sides share; the floor ignores differences too small to
matter. Too few samples is *not enough data*, never *no worse*. The test counts each poll as
independent: rate windows longer than the poll interval overlap, so one burst sits in several
samples (the recorded traces show false rollbacks from it; see tests/bot/test_judge_replay.py).

The effect is measured on medians, which one bad scrape does not move; where the medians tie
(error ratios at low traffic are mostly zeros, so both medians are 0 while one side does
fail) it is measured on means. A baseline at 0 and a version above it is an infinite relative
worsening (Kayenta's issue #377 is this case judged "no worse").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from statistics import fmean, median
from typing import Literal

from scipy.stats import mannwhitneyu

from bot.domain.config import Kpi


class Decision(StrEnum):
    worse = "worse"
    no_worse = "no_worse"
    not_enough_data = "not_enough_data"


@dataclass(frozen=True)
class Comparison:
    decision: Decision
    samples: int  # pairs compared
    new_median: float | None = None
    baseline_median: float | None = None
    new_mean: float | None = None
    baseline_mean: float | None = None
    relative: float | None = None  # (new - baseline) / baseline, the bad way (see above)
    difference: float | None = None  # new - baseline, the bad way
    p_value: float | None = None
    rule: str = ""  # what decided, in words

    def explain(self, kpi: Kpi) -> str:
        """One sentence a person on call understands."""
        if self.decision is Decision.not_enough_data:
            return f"{kpi.name}: not enough data yet ({self.rule})"
        assert self.new_median is not None and self.baseline_median is not None
        verdict = "worse than" if self.decision is Decision.worse else "no worse than"
        p = "n/a" if self.p_value is None else f"{self.p_value:.3g}"
        return (
            f"{kpi.name}: new version {verdict} the baseline (median {self.new_median:.4g} vs "
            f"{self.baseline_median:.4g}, effect {_effect(self)}, p={p}, {self.samples} polls): "
            f"{self.rule}"
        )


def _effect(comparison: Comparison) -> str:
    relative = comparison.relative
    if relative is None:
        return "none"
    if math.isinf(relative):
        return f"+{comparison.difference:.4g} from zero"
    return f"{relative:+.0%}"


def _bad_way(kpi: Kpi, new: float, baseline: float) -> float:
    return new - baseline if kpi.direction == "increase" else baseline - new


def compare(kpi: Kpi, new: Sequence[float], baseline: Sequence[float]) -> Comparison:
    """Judge the samples of one step so far (each side's values, NaN-free, same polls)."""
    pairs = min(len(new), len(baseline))
    if pairs < kpi.min_samples:
        return Comparison(
            Decision.not_enough_data,
            pairs,
            rule=f"{pairs} of the {kpi.min_samples} polls needed on both versions",
        )
    new_mean, base_mean = fmean(new), fmean(baseline)
    new_median, base_median = median(new), median(baseline)
    if new_median != base_median:
        new_level, base_level = new_median, base_median
    else:
        new_level, base_level = new_mean, base_mean
    difference = _bad_way(kpi, new_level, base_level)
    if base_level != 0:
        relative = difference / abs(base_level)
    else:
        relative = math.inf if difference > 0 else 0.0
    comparison = Comparison(
        Decision.no_worse,
        pairs,
        new_median=new_median,
        baseline_median=base_median,
        new_mean=new_mean,
        baseline_mean=base_mean,
        relative=relative,
        difference=difference,
    )
    floors = []
    if kpi.tolerance is not None:
        floors.append(
            (
                relative > kpi.tolerance,
                f"worsening {_effect(comparison)} vs {kpi.tolerance:+.0%} tolerated",
            )
        )
    if kpi.absolute is not None:
        floors.append(
            (
                difference > kpi.absolute,
                f"difference {difference:.4g} vs {kpi.absolute:g} tolerated",
            )
        )
    big_enough = all(passed for passed, _ in floors)
    floor_words = "; ".join(words for _, words in floors)
    alpha = 1 - kpi.confidence
    if len(set(new) | set(baseline)) == 1:
        # Every sample equal (all zeros, say): nothing differs, and the test is undefined.
        return replace(comparison, rule="both versions identical")
    alternative: Literal["greater", "less"] = "greater" if kpi.direction == "increase" else "less"
    p_value = float(mannwhitneyu(list(new), list(baseline), alternative=alternative).pvalue)
    shifted = p_value < alpha
    if shifted and big_enough:
        rule = f"rank test p={p_value:.3g} < {alpha:.3g} and {floor_words}"
        return replace(comparison, decision=Decision.worse, p_value=p_value, rule=rule)
    if not shifted:
        rule = f"rank test p={p_value:.3g} ≥ {alpha:.3g}: no reliable shift"
    else:
        rule = f"shifted (p={p_value:.3g}) but below the floor: {floor_words}"
    return replace(comparison, p_value=p_value, rule=rule)
