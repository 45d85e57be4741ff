"""/pipeline: what each pipeline is doing, its history, and its exports.

The use case gathers what is true (Redis, and the engine for one named pipeline); the chat
layer lays it out (bot/slack/messages.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.domain.config import Pipeline
from bot.domain.models import AuditEntry, PipelineState, Rollout
from bot.domain.parsing import parse_pipeline, wants_help
from bot.ports import LiveVersion
from bot.reports import audit_export
from bot.services import incidents
from bot.services.context import Context
from bot.services.requests import CommandRequest, Reply, help_reply
from bot.store.store import PipelineSnapshot


@dataclass(frozen=True)
class PipelineStatus:
    name: str
    pipeline: Pipeline
    state: PipelineState
    inflight: Rollout | None
    watching: Rollout | None
    engine: LiveVersion | None  # asked of the engine only when one pipeline is named


@dataclass(frozen=True)
class StatusReport:
    pipelines: list[PipelineStatus]


@dataclass(frozen=True)
class HistoryReport:
    name: str
    rollouts: list[Rollout]
    audit: list[AuditEntry]


@dataclass(frozen=True)
class Document:
    """A Markdown export; `verbatim` ones are shown exactly as written (a code block)."""

    markdown: str
    verbatim: bool


PipelineAnswer = Reply | StatusReport | HistoryReport | Document

HISTORY_ROLLOUTS = 15
HISTORY_AUDIT = 15


def pipeline_command(ctx: Context, request: CommandRequest) -> PipelineAnswer:
    if wants_help(request.text):
        return help_reply("/pipeline")
    args = parse_pipeline(request.text)
    if args.view == "history":
        assert args.subject is not None
        ctx.pipeline(args.subject)
        return HistoryReport(
            args.subject,
            ctx.store.recent_rollouts(args.subject, HISTORY_ROLLOUTS),
            ctx.store.audit_entries(pipeline=args.subject, limit=HISTORY_AUDIT),
        )
    if args.view == "audit":
        assert args.subject is not None
        ctx.pipeline(args.subject)
        return Document(export_audit(ctx, args.subject), verbatim=True)
    if args.view == "incident":
        assert args.subject is not None
        return Document(incidents.export_markdown(ctx, args.subject), verbatim=False)
    names = [args.subject] if args.subject else sorted(ctx.config.pipelines)
    return StatusReport(statuses(ctx, names, ask_engine=bool(args.subject)))


def statuses(ctx: Context, names: list[str], *, ask_engine: bool) -> list[PipelineStatus]:
    """Each pipeline's status; Redis is read once for all of them."""
    pipelines = {name: ctx.pipeline(name) for name in names}
    snapshots = ctx.store.pipeline_snapshots(names)
    return [
        status_from(ctx, name, pipelines[name], snapshots[name], ask_engine=ask_engine)
        for name in names
    ]


def status_from(
    ctx: Context, name: str, pipeline: Pipeline, snapshot: PipelineSnapshot, *, ask_engine: bool
) -> PipelineStatus:
    state = snapshot.state
    engine = ctx.target(pipeline).live(name, pipeline) if ask_engine else None
    return PipelineStatus(name, pipeline, state, snapshot.inflight, snapshot.live, engine)


def export_audit(ctx: Context, name: str) -> str:
    """The pipeline's audit trail as a Markdown document: who did what, when, how it ended."""
    entries = ctx.store.audit_entries(pipeline=name, limit=audit_export.MAX_ENTRIES + 1)
    return audit_export.export_markdown(
        name,
        entries,
        ctx.store.recent_rollouts(name, audit_export.MAX_ROLLOUTS),
        zone=ctx.config.timezone,
        now=ctx.clock.now(),
        kept_days=ctx.limits.audit_max_age_days,
    )
