"""bot.domain.averages against HAProxy 2.6's own arithmetic: a slot's running sum of response
times in whole milliseconds (`swrate_add_dynamic`: summed as they are for the slot's first 512
requests, decayed by 1/512 each after that), exported as ceil(sum / 512) ms."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.domain.averages import WINDOW, AverageReading, interval_mean, span_means
from bot.domain.config import Kpi
from bot.domain.judging import Decision, compare_averages


class Slot:
    """One HAProxy server slot's response-time statistics, as HAProxy 2.6 keeps them."""

    def __init__(self) -> None:
        self.sum = 0  # milliseconds
        self.served = 0

    def serve(self, ms: int) -> None:
        self.served += 1
        window = WINDOW if self.served > WINDOW else 0  # swrate_add_dynamic's n
        self.sum = self.sum - ((self.sum + window - 1) // window if window else 0) + ms

    def reading(self) -> AverageReading:
        """What the built-in latency_average query answers: the exported average (seconds)
        scaled by 512 / clamp(served, 1, 512), and the slot's response counter."""
        average = (self.sum + WINDOW - 1) // WINDOW / 1000
        return AverageReading(average * WINDOW / min(max(self.served, 1), WINDOW), self.served)


def _run(
    slot: Slot, polls: int, per_poll: int, latency: Callable[[int], int], rng: random.Random
) -> list[AverageReading]:
    readings = [slot.reading()]
    for poll in range(1, polls + 1):
        for _ in range(per_poll):
            slot.serve(max(1, round(rng.gauss(latency(poll), 8))))
        readings.append(slot.reading())
    return readings


def _busy(rng: random.Random, served: int = 5000, ms: int = 60) -> Slot:
    slot = Slot()
    for _ in range(served):
        slot.serve(max(1, round(rng.gauss(ms, 8))))
    return slot


@pytest.mark.parametrize("per_poll", [10, 75])
def test_the_span_mean_of_a_fresh_slot_and_of_a_busy_one_is_the_responses_mean(
    per_poll: int,
) -> None:
    rng = random.Random(per_poll)
    fresh = _run(Slot(), 22, per_poll, lambda poll: 60, rng)
    busy = _run(_busy(rng, ms=90), 22, per_poll, lambda poll: 60, rng)  # it was slower before
    for readings in (fresh, busy):
        mean, served = span_means(readings)[-1]  # type: ignore[misc]
        assert served == 22 * per_poll
        # The 1 ms rounding leaves about 512 ms / responses; the responses' own noise less.
        assert mean * 1000 == pytest.approx(60, abs=512 / served + 1.5)


def test_a_spike_both_versions_share_moves_both_span_means_alike() -> None:
    """The recorded false rollback: 3 polls of 250 ms on both versions mid-step. HAProxy's
    average as it is (the new slot's mean of everything, the baseline's last 512) weighs it
    far more on the new version; the span means weigh it alike."""
    rng = random.Random(7)

    def spiked(poll: int) -> int:
        return 250 if 8 <= poll <= 10 else 60

    new = _run(Slot(), 22, 10, spiked, rng)
    base = _run(_busy(rng), 22, 10, spiked, rng)
    new_mean, _ = span_means(new)[-1]  # type: ignore[misc]
    base_mean, _ = span_means(base)[-1]  # type: ignore[misc]
    assert new_mean == pytest.approx(base_mean, rel=0.05)
    as_they_are = new[-1].value / base[-1].value
    assert as_they_are > 1.2  # what the judge compared before: beyond the +20% a floor may be


def test_an_interval_with_no_responses_and_a_proxy_restart() -> None:
    assert interval_mean(AverageReading(0.06, 100), AverageReading(0.06, 100)) is None
    means = span_means(
        [AverageReading(0.06, 100), AverageReading(0.06, 110), AverageReading(0.06, 5)]
    )
    assert len(means) == 1  # the counter went back: the span ends there


def _kpi() -> Kpi:
    return Kpi.model_validate(
        {"name": "latency", "builtin": "latency_average", "judge": "compare", "tolerance": 0.25}
    )


def test_compare_averages_says_worse_for_a_slower_new_version_over_the_same_span() -> None:
    rng = random.Random(3)
    new = _run(Slot(), 10, 75, lambda poll: 90, rng)
    base = _run(_busy(rng), 10, 75, lambda poll: 60, rng)
    polls = [(n.value, n.served, b.value, b.served) for n, b in zip(new, base, strict=True)]
    assert compare_averages(_kpi(), polls[:1]).decision is Decision.not_enough_data
    judged = compare_averages(_kpi(), polls)
    assert judged.decision is Decision.worse, judged.rule
    assert "same span" in judged.rule and "750 responses of the new version" in judged.rule
    alike = compare_averages(_kpi(), [(b.value, b.served, b.value, b.served) for b in base])
    assert alike.decision is Decision.no_worse


def test_compare_averages_measures_again_after_a_proxy_restart() -> None:
    before = [(0.06, 100.0 + 10 * i, 0.06, 9000.0 + 10 * i) for i in range(8)]
    after = [(0.06, 10.0 * i, 0.06, 10.0 * i) for i in range(1, 3)]
    judged = compare_averages(_kpi(), before + after)
    assert judged.decision is Decision.not_enough_data
    assert (
        "10 responses of the new version" in judged.rule
        and "since the proxy restarted" in judged.rule
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0.001, 5.0), st.integers(0, 200)), min_size=2, max_size=40),
    st.integers(0, 5000),
)
def test_the_same_readings_on_both_sides_never_breach(
    steps: list[tuple[float, int]], start: int
) -> None:
    served = float(start)
    polls = []
    for value, more in steps:
        served += more
        polls.append((value, served, value, served))
    assert compare_averages(_kpi(), polls).decision is not Decision.worse


def test_a_long_step_is_judged_in_one_pass() -> None:
    """A power-sized step (1,000 polls) is judged at every poll: linear in the step's polls."""
    rng = random.Random(5)
    new = _run(Slot(), 1000, 75, lambda poll: 60, rng)
    base = _run(_busy(rng), 1000, 75, lambda poll: 60, rng)
    polls = [(n.value, n.served, b.value, b.served) for n, b in zip(new, base, strict=True)]
    started = time.perf_counter()
    judged = compare_averages(_kpi(), polls)
    assert time.perf_counter() - started < 0.5
    assert judged.decision is Decision.no_worse
