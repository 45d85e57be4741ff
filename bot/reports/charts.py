"""The breach chart: a KPI's samples over time as PNG bytes (matplotlib, Agg, in memory).

Pure: samples in, bytes out. No pyplot (its global state is not for threads), no files.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import UTC, datetime

from bot.domain.incidents import Incident, KpiSample

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WIDTH_INCHES, HEIGHT_INCHES, DPI = 9.0, 4.0, 100

# How each poll's verdict is drawn: colour and legend label.
_VERDICT_STYLES = {
    "ok": ("#2e7d32", "within tolerance"),
    "breach": ("#c62828", "beyond tolerance"),
    "no_data": ("#c62828", "beyond tolerance"),
    "warmup": ("#9e9e9e", "not judged (warm-up, skipped)"),
    "ignored": ("#9e9e9e", "not judged (warm-up, skipped)"),
}


def _clock_label(x: float, _position: int | None = None) -> str:
    return datetime.fromtimestamp(x, UTC).strftime("%H:%M:%S")


def kpi_chart(
    samples: Sequence[KpiSample],
    *,
    kpi: str,
    tolerance_max: float | None = None,
    tolerance_min: float | None = None,
    deploy_at: float | None = None,
    deploy_label: str = "deploy",
    action_at: float | None = None,
    action_label: str = "rollback",
    title: str = "",
    history: Sequence[tuple[float, float]] = (),
) -> bytes:
    """PNG of one KPI's samples, its tolerance lines, and the deploy and rollback marked.

    Polls without data are drawn as crosses on the time axis; breaching polls in red.
    """
    # Imported on first use: matplotlib costs ~45 MB of RSS that a bot without breaches
    # never needs.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    figure = Figure(figsize=(WIDTH_INCHES, HEIGHT_INCHES), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()

    with_data = [s for s in samples if s.value is not None]
    without_data = [s for s in samples if s.value is None]
    if history:
        axes.plot(
            [at for at, _ in history],
            [value for _, value in history],
            color="#90a4ae",
            linewidth=1.0,
            label=f"{kpi} (Prometheus, around the deploy)",
            zorder=1,
        )
    if with_data:
        axes.plot(
            [s.at for s in with_data],
            [float(s.value or 0.0) for s in with_data],
            color="#1565c0",
            linewidth=1.5,
            label=kpi,
            zorder=2,
        )
        by_label: dict[str, tuple[str, list[KpiSample]]] = {}
        for sample in with_data:
            colour, label = _VERDICT_STYLES.get(sample.verdict, ("#1565c0", sample.verdict))
            by_label.setdefault(label, (colour, []))[1].append(sample)
        for label, (colour, group) in by_label.items():
            axes.scatter(
                [s.at for s in group],
                [float(s.value or 0.0) for s in group],
                color=colour,
                s=28,
                label=label,
                zorder=3,
            )
    with_baseline = [s for s in with_data if s.baseline is not None]
    if with_baseline:
        # judge: compare: the baseline's series beside the new version's, same polls.
        axes.plot(
            [s.at for s in with_baseline],
            [float(s.baseline or 0.0) for s in with_baseline],
            color="#2e7d32",
            linewidth=1.5,
            linestyle="--",
            label=f"{kpi}, baseline version",
            zorder=2,
        )
    if without_data:
        axes.scatter(
            [s.at for s in without_data],
            [0.0] * len(without_data),
            marker="x",
            color="#616161",
            label="no data",
            zorder=3,
        )
    if tolerance_max is not None:
        axes.axhline(tolerance_max, color="#c62828", linestyle="--", label=f"max {tolerance_max:g}")
    if tolerance_min is not None:
        axes.axhline(tolerance_min, color="#ef6c00", linestyle="--", label=f"min {tolerance_min:g}")
    if deploy_at is not None:
        axes.axvline(deploy_at, color="#6a1b9a", linewidth=1.2, label=deploy_label)
    if action_at is not None:
        axes.axvline(action_at, color="#ef6c00", linewidth=1.2, linestyle="-.", label=action_label)

    values = [float(s.value) for s in with_data if s.value is not None] + [v for _, v in history]
    levels = [v for v in (*values, tolerance_max, tolerance_min, 0.0) if v is not None]
    low, high = min(levels), max(levels)
    span = (high - low) or abs(high) or 1.0
    axes.set_ylim(low - span * 0.08, high + span * 0.15)
    times = (
        [s.at for s in samples]
        + [at for at, _ in history]
        + [t for t in (deploy_at, action_at) if t is not None]
    )
    if times:
        start, end = min(times), max(times)
        pad = max((end - start) * 0.05, 1.0)
        axes.set_xlim(start - pad, end + pad)
    if not samples:
        axes.text(
            0.5,
            0.5,
            "no samples recorded",
            transform=axes.transAxes,
            ha="center",
            va="center",
            color="#616161",
        )

    axes.xaxis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 5, 10]))
    axes.xaxis.set_major_formatter(FuncFormatter(_clock_label))
    axes.set_xlabel("time (UTC)")
    axes.set_ylabel(kpi)
    axes.grid(True, alpha=0.3)
    if title:
        axes.set_title(title, fontsize=11)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="best", fontsize=8, framealpha=0.9)

    buffer = io.BytesIO()
    # No metadata: the same samples give the same bytes.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def incident_chart(incident: Incident) -> bytes:
    """The chart for a breach alert: the watch's samples, the deploy, and what followed."""
    if incident.rollback_rollout_id and incident.restored_version:
        action = f"rollback to {incident.restored_version}"
    else:
        action = "breach detected"
    return kpi_chart(
        incident.samples,
        kpi=incident.kpi,
        tolerance_max=incident.kpi_max,
        tolerance_min=incident.kpi_min,
        deploy_at=incident.live_at,
        deploy_label=f"{incident.bad_version} live",
        action_at=incident.opened_at,
        action_label=action,
        title=f"{incident.kpi} on {incident.pipeline} after {incident.bad_version} went live",
        history=incident.history,
    )
