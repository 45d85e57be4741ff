"""KPI readings and verdicts: no data is never healthy by accident."""

from __future__ import annotations

import pytest

from bot.domain.config import Kpi
from bot.domain.kpis import Reading, Verdict, judge, next_streak
from bot.kpi_sources.prometheus import PrometheusSource, reading_from_result


def kpi(**fields: object) -> Kpi:
    return Kpi.model_validate({"name": "error_rate", "query": "q", **fields})


@pytest.mark.parametrize(
    ("data", "value", "detail"),
    [
        ({"resultType": "scalar", "result": [1.0, "0.25"]}, 0.25, ""),
        ({"resultType": "vector", "result": [{"metric": {}, "value": [1.0, "3"]}]}, 3.0, ""),
        ({"resultType": "vector", "result": []}, None, "empty result"),
        ({"resultType": "vector", "result": [{"metric": {}, "value": [1.0, "NaN"]}]}, None, "NaN"),
        ({"resultType": "vector", "result": [{"metric": {}, "value": [1.0, "+Inf"]}]}, None, "Inf"),
        ({"resultType": "matrix", "result": []}, None, "unsupported result type"),
    ],
)
def test_reading_from_result(data: dict[str, object], value: float | None, detail: str) -> None:
    reading = reading_from_result(data)
    assert reading.value == value
    assert detail in reading.detail


def test_several_series_are_a_config_error() -> None:
    two = [{"metric": {"a": "1"}, "value": [1, "1"]}, {"metric": {"a": "2"}, "value": [1, "2"]}]
    reading = reading_from_result({"resultType": "vector", "result": two})
    assert reading.value is None and reading.config_error
    assert "returns 2 series" in reading.detail


def test_unreachable_prometheus_is_no_data() -> None:
    reading = PrometheusSource("http://127.0.0.1:9").read("up", timeout=0.5)
    assert reading.value is None and "unreachable" in reading.detail


def test_judge() -> None:
    rate = kpi(max=0.02, **{"for": 3})
    assert judge(rate, Reading(0.5), slot=1, warmup_polls=1) is Verdict.warmup
    assert judge(rate, Reading(0.5), slot=2, warmup_polls=1) is Verdict.breach
    assert judge(rate, Reading(0.02), slot=2, warmup_polls=1) is Verdict.ok
    assert judge(rate, Reading(None, "x"), slot=2, warmup_polls=1) is Verdict.no_data
    ignoring = kpi(max=0.02, no_data="ignore")
    assert judge(ignoring, Reading(None, "x"), slot=2, warmup_polls=1) is Verdict.ignored
    floor = kpi(min=10)
    assert judge(floor, Reading(9.9), slot=5, warmup_polls=0) is Verdict.breach
    band = kpi(min=1, max=2)
    assert [judge(band, Reading(v), 9, 0) for v in (0.5, 1.5, 2.5)] == [
        Verdict.breach,
        Verdict.ok,
        Verdict.breach,
    ]


def test_streaks_count_polls_in_a_row() -> None:
    streak = 0
    for verdict, expected in [
        (Verdict.warmup, 0),
        (Verdict.breach, 1),
        (Verdict.no_data, 2),
        (Verdict.ignored, 2),  # skipped: neither counts nor resets
        (Verdict.ok, 0),
        (Verdict.breach, 1),
    ]:
        streak = next_streak(streak, verdict)
        assert streak == expected


def test_a_kpi_needs_a_tolerance() -> None:
    with pytest.raises(ValueError, match="needs max and/or min"):
        kpi()
