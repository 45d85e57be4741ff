"""The audit trail of a pipeline as Markdown (`/pipeline audit <pipeline>`): pure functions.

People paste it into a post-mortem or a change record, so it names users by id, shows times in
the config's time zone and says plainly when rows were left out.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from bot.domain.models import AuditEntry, Rollout

MAX_ENTRIES = 100
MAX_ROLLOUTS = 20
# Slack shows at most 40,000 characters of a message's text; leave room for the fences.
MAX_CHARS = 38_000


def local_time(epoch: float, zone: str) -> str:
    return datetime.fromtimestamp(epoch, ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S %Z")


def cell(text: str) -> str:
    """One Markdown table cell: no pipes, newlines or backticks can break the table."""
    cleaned = " ".join(text.split()).replace("|", "\\|").replace("`", "'")
    return cleaned or "-"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(cell(value) for value in row) + " |" for row in rows)
    return lines


def export_markdown(
    name: str,
    entries: list[AuditEntry],
    rollouts: list[Rollout],
    *,
    zone: str,
    now: float,
    kept_days: float,
) -> str:
    """Rollouts and audit entries, newest first; `entries` may hold one more than shown."""
    shown = entries[:MAX_ENTRIES]
    more = len(entries) > MAX_ENTRIES
    head = [
        f"# Audit trail of {name}",
        "",
        f"Exported {local_time(now, zone)} ({zone}). The audit stream keeps {kept_days:g} days; "
        "newest first.",
        "",
        f"## Rollouts ({len(rollouts)} most recent)",
        "",
    ]
    rollout_rows = [
        [
            local_time(r.created_at, zone),
            r.kind.value,
            r.version,
            r.requested_by,
            r.status.value + (f": {r.why().plain()}" if r.error else ""),
            ", ".join(f"{a.decision} by {a.user}" for a in r.approvals),
            r.id,
        ]
        for r in rollouts
    ]
    if rollout_rows:
        head += _table(
            ["Requested", "Kind", "Version", "By", "Outcome", "Approvals", "Rollout"],
            rollout_rows,
        )
    else:
        head.append("No rollouts yet.")
    head += ["", "## Who did what", ""]
    rows = [
        [
            local_time(e.at, zone),
            e.actor,
            e.action,
            e.outcome,
            e.command,
            e.detail,
            e.rollout,
        ]
        for e in shown
    ]
    if not rows:
        return "\n".join([*head, "No audit entries."])
    table = _table(["When", "Who", "Action", "Outcome", "Command", "Detail", "Rollout"], rows)
    body = [*head, *table]
    while len("\n".join(body)) > MAX_CHARS and len(table) > 3:
        table.pop()
        more = True
        body = [*head, *table]
    if more:
        body += [
            "",
            f"Only the newest {len(table) - 2} entries are shown; older ones stay in the stream "
            f"until they are {kept_days:g} days old.",
        ]
    return "\n".join(body)
