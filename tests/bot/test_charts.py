"""The breach chart: PNG bytes in memory from samples, whatever the samples look like."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from bot.domain.incidents import Incident, KpiSample
from bot.reports.charts import (
    DPI,
    HEIGHT_INCHES,
    PNG_SIGNATURE,
    WIDTH_INCHES,
    incident_chart,
    kpi_chart,
)

START = 1_800_000_000.0


def samples(values: list[tuple[float | None, str]]) -> list[KpiSample]:
    return [
        KpiSample(at=START + slot, slot=slot, kpi="error_rate", value=value, verdict=verdict)
        for slot, (value, verdict) in enumerate(values, start=1)
    ]


BREACH = samples([(None, "warmup"), (0.0, "ok"), (0.01, "ok"), (0.48, "breach"), (0.5, "breach")])


def image(png: bytes) -> Image.Image:
    assert png.startswith(PNG_SIGNATURE)
    picture = Image.open(io.BytesIO(png))
    picture.load()
    return picture


def test_a_breach_chart_is_a_png_of_the_expected_size() -> None:
    png = kpi_chart(
        BREACH,
        kpi="error_rate",
        tolerance_max=0.1,
        deploy_at=START,
        deploy_label="3 live",
        action_at=START + 5.2,
        action_label="rollback to 1",
        title="error_rate on web",
    )
    picture = image(png)
    assert picture.format == "PNG"
    assert picture.size == (int(WIDTH_INCHES * DPI), int(HEIGHT_INCHES * DPI))
    # Not a blank canvas: the lines and points put many colours on it.
    assert len(picture.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50


def test_the_same_samples_give_the_same_bytes() -> None:
    assert kpi_chart(BREACH, kpi="error_rate", tolerance_max=0.1) == kpi_chart(
        BREACH, kpi="error_rate", tolerance_max=0.1
    )
    assert kpi_chart(BREACH, kpi="error_rate", tolerance_max=0.1) != kpi_chart(
        BREACH, kpi="error_rate", tolerance_max=0.2
    )


@pytest.mark.parametrize(
    "cases",
    [
        [],
        samples([(None, "no_data"), (None, "no_data")]),
        samples([(0.0, "ok")]),
        samples([(250.0, "breach"), (260.0, "breach")]),
        samples([(-5.0, "breach"), (float(10**9), "ok")]),
    ],
    ids=["no-samples", "no-data-only", "one-zero", "large", "wide-range"],
)
def test_odd_samples_still_draw(cases: list[KpiSample]) -> None:
    image(kpi_chart(cases, kpi="latency", tolerance_min=1.0, tolerance_max=200.0))


def test_incident_chart_uses_the_incident(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    incident = Incident(
        id="inc-1",
        pipeline="web",
        channel="C0DEPLOY",
        rollout_id="r-1",
        bad_version="3",
        restored_version="1",
        rollback_rollout_id="r-2",
        kpi="error_rate",
        query="q",
        tolerance="error_rate ≤ 0.1",
        kpi_max=0.1,
        samples=BREACH,
        opened_at=START + 5.2,
        live_at=START,
    )
    image(incident_chart(incident))
    assert os.listdir(tmp_path) == [], "the chart is made in memory: nothing is written"
