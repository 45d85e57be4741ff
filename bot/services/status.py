"""/pipeline: what each pipeline is doing, its history, and its exports.

The use case gathers what is true (Redis, and the engine for one named pipeline); the chat
layer lays it out (bot/slack/messages.py). What the engine runs comes from the engine view
(services/engine_view.py), refreshed in the background while the pipeline is asked about, and
used while it still describes the state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.domain.config import Pipeline
from bot.domain.models import AuditEntry, PipelineState, Rollout
from bot.domain.parsing import parse_pipeline, wants_help
from bot.ports import LiveVersion
from bot.reports import audit_export
from bot.services import incidents
from bot.services.context import Context
from bot.services.engine_view import EngineReading
from bot.services.requests import CommandRequest, Reply, help_reply
from bot.store.store import PipelineSnapshot

logger = logging.getLogger(__name__)


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
    engine = engine_of(ctx, name, pipeline, state) if ask_engine else None
    return PipelineStatus(name, pipeline, state, snapshot.inflight, snapshot.live, engine)


def engine_of(
    ctx: Context, name: str, pipeline: Pipeline, state: PipelineState
) -> LiveVersion | None:
    """What the engine runs: the view's reading when it is young, still about `state`, and
    agrees with it; otherwise the engine is asked. So a disagreement, the only thing the
    reply shows of the engine, is always what the engine says now.

    Asking keeps the pipeline in the view for a while, and the engine's answer is a reading
    like the job's (the state was read before it), so the next ask need not wait for the job.
    """
    now = ctx.clock.now()
    ctx.engine_view.asked_about(name, now)
    reading = ctx.engine_view.usable(name, state, now)
    if reading is not None and _agrees(reading.live, state):
        return reading.live
    return _read_engine(ctx, name, pipeline, state)


def _read_engine(
    ctx: Context, name: str, pipeline: Pipeline, state: PipelineState
) -> LiveVersion | None:
    """Ask the engine what runs; the answer becomes the view's reading about `state` (read
    before the engine was asked), unless a rollout is in flight: then none is kept."""
    read_at = ctx.clock.now()
    live = ctx.target(pipeline).live(name, pipeline)
    if not state.inflight_rollout:
        ctx.engine_view.put(
            name, EngineReading(live, read_at, state.live_version, state.live_rollout)
        )
    return live


def _agrees(live: LiveVersion | None, state: PipelineState) -> bool:
    return (live.version if live is not None else "") == state.live_version


def refresh_engine_view(ctx: Context) -> None:
    """Every couple of seconds: read what the engine runs for each pipeline asked about lately
    (`EngineView.wanted`), into the view; nothing at all when nobody asked.

    The state is read first, so a rollout that goes live while the engine is asked makes the
    reading about an older state, never used for the newer one.
    """
    names = [n for n in ctx.engine_view.wanted(ctx.clock.now()) if n in ctx.config.pipelines]
    if not names:
        return
    snapshots = ctx.store.pipeline_snapshots(names)
    for name in names:
        state = snapshots[name].state
        if state.inflight_rollout:
            ctx.engine_view.forget(name)  # never used while a rollout runs: the engine is asked
            continue
        try:
            _read_engine(ctx, name, ctx.pipeline(name), state)
        except Exception:
            # Without a reading, /pipeline <name> asks the engine itself, as it always did.
            if ctx.engine_view.forget(name):
                logger.warning("could not read what the engine runs for %s", name, exc_info=True)


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
