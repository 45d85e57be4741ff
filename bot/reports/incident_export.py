"""An incident as a Markdown post-mortem (pure)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from bot.domain.incidents import WHYS, Incident, KpiSample
from bot.domain.models import AuditEntry


def render_markdown(
    incident: Incident,
    entries: list[AuditEntry],
    zone: ZoneInfo,
    *,
    sample_limit: int | None = None,
    entry_limit: int | None = None,
    answer_limit: int | None = None,
) -> str:
    """The Markdown text of an incident (pure); limits thin samples, timeline and answers."""

    def when(epoch: float | None) -> str:
        if epoch is None:
            return "-"
        return datetime.fromtimestamp(epoch, zone).strftime("%Y-%m-%d %H:%M:%S %Z")

    def cut(text: str) -> str:
        text = " ".join(text.split())
        if answer_limit is None or len(text) <= answer_limit:
            return text
        return text[: answer_limit - 1] + "…"

    lines = [
        f"# Incident {incident.id}: {incident.kpi} breach on {incident.pipeline}",
        "",
        f"- **KPI:** `{incident.kpi}`; tolerance `{incident.tolerance}`, "
        f"{incident.for_polls} poll(s) in a row",
        f"- **Query:** `{incident.query}`",
        f"- **Bad version:** `{incident.bad_version}` ({incident.rollout_id}), "
        f"live at {when(incident.live_at)}",
        f"- **Restored version:** `{incident.restored_version or '(none)'}`"
        + (f" ({incident.rollback_rollout_id})" if incident.rollback_rollout_id else ""),
        f"- **Opened:** {when(incident.opened_at)}",
    ]
    if incident.resumed_at is not None:
        forced = f", forced: {incident.force_reason}" if incident.force_reason else ""
        lines.append(f"- **Resumed:** {when(incident.resumed_at)} by {incident.resumed_by}{forced}")
    else:
        lines.append(f"- **Pipeline:** halted until `/resume {incident.pipeline}`")

    lines += ["", "## Timeline"]
    shown_entries = entries
    if entry_limit is not None and len(entries) > entry_limit:
        shown_entries = entries[-entry_limit:]
        lines.append(f"- … {len(entries) - entry_limit} earlier entries left out")
    for entry in shown_entries:
        who = entry.actor
        outcome = f" → {entry.outcome}" if entry.outcome else ""
        detail = f": {cut(entry.detail)}" if entry.detail else ""
        lines.append(f"- {when(entry.at)} {who} `{entry.action}`{outcome}{detail}")
    if not entries:
        lines.append("- (no audit entries)")

    lines += ["", f"## Samples of {incident.kpi} ({len(incident.samples)})"]
    lines += _sample_lines(incident, sample_limit, when)

    lines += ["", "## Five whys"]
    for n in WHYS:
        answer = incident.whys.get(n, "")
        lines.append(f"{n}. {cut(answer) if answer else '_(missing)_'}")
    lines += ["", "## Root cause", cut(incident.root_cause) or "_(missing)_"]
    lines += [
        "",
        "## Failing test",
        f"<{incident.failing_test}>" if incident.failing_test else "_(missing)_",
    ]
    return "\n".join(lines)


def _sample_lines(
    incident: Incident, limit: int | None, when: Callable[[float | None], str]
) -> list[str]:
    samples = incident.samples
    if not samples:
        return ["- (no samples recorded)"]
    if limit is not None and len(samples) > limit:
        if limit == 0:
            breaching = incident.breaching_samples()
            return [
                f"- {len(samples)} samples left out; the breach: "
                + ", ".join(_value(s) for s in breaching[-incident.for_polls :])
            ]
        # Keep the end of the watch (the breaching run and what led to it).
        kept = samples[-limit:]
        lines = [f"- … {len(samples) - limit} earlier samples left out"]
    else:
        kept, lines = samples, []
    for sample in kept:
        verdict = f"**{sample.verdict}**" if sample.breaching else sample.verdict
        lines.append(f"- {when(sample.at)} poll {sample.slot}: {_value(sample)} ({verdict})")
    return lines


def _value(sample: KpiSample) -> str:
    return "no data" if sample.value is None else f"{sample.value:.4g}"
