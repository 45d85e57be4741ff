"""/halt and /resume: stopping the line, and re-opening it once the analysis is written."""

from __future__ import annotations

from bot.domain.errors import NotAllowed, ResumeRefused
from bot.domain.models import Rollout, RolloutKind, RolloutStatus
from bot.domain.parsing import parse_halt, parse_resume, wants_help
from bot.domain.text import Moment, Text, User, Users, join, say
from bot.services import approvals, incidents, queue
from bot.services.context import Context
from bot.services.requests import CommandRequest, Reply, help_reply

IMMUNE = "immune"  # the actor name of the bot's own decisions


def halt(ctx: Context, request: CommandRequest) -> Reply:
    """Anyone may halt (the andon cord): stopping the line must never wait for permission."""
    if wants_help(request.text):
        return help_reply("/halt")
    args = parse_halt(request.text)
    names = sorted(ctx.config.pipelines) if args.pipeline == "all" else [args.pipeline]
    for name in names:
        ctx.pipeline(name)
    reason = args.reason or "no reason given"
    states = {name: ctx.store.pipeline(name) for name in names}
    halted = [name for name in names if not states[name].halted]
    # Every pipeline is marked halted before anything slower happens (audit, approvals, Slack):
    # `/halt all` stops every line at once, and a runner's next safe point already sees it.
    for name in halted:
        ctx.store.halt(name, by=request.user_id, reason=reason)
    inflight = [
        rollout
        for name in halted
        if (
            rollout := _after_halt(
                ctx, name, by=request.user_id, reason=reason, command=request.typed
            )
        )
    ]
    by_channel: dict[str, list[str]] = {}
    for name in halted:
        by_channel.setdefault(ctx.pipeline(name).channel, []).append(name)
    for channel, channel_names in by_channel.items():
        ctx.notifier.pipelines_halted(channel, channel_names, request.user_id, reason)
    lines: list[Text | str] = []
    if halted:
        lines.append(say(":octagonal_sign: Halted {}: {}.", _names(halted), reason))
    lines += [_inflight_note(rollout) for rollout in inflight]
    for name in names:
        if name in halted:
            continue
        state = states[name]
        lines.append(
            say(
                "`{}` was already halted by {} {}: {}.",
                name,
                User(state.halted_by),
                Moment(state.halted_at or 0),
                state.halted_reason,
            )
        )
    return Reply(join(lines))


def halt_pipeline(
    ctx: Context, name: str, *, by: str, reason: str, incident: str = "", command: str = ""
) -> None:
    """Halt one pipeline; a rollout awaiting approval is cancelled, one in flight stops safely."""
    pipeline = ctx.pipeline(name)
    ctx.store.halt(name, by=by, reason=reason, incident=incident)
    _after_halt(ctx, name, by=by, reason=reason, command=command)
    if by != IMMUNE:
        ctx.notifier.pipelines_halted(pipeline.channel, [name], by, reason)


def _after_halt(ctx: Context, name: str, *, by: str, reason: str, command: str) -> Rollout | None:
    """Audit a halt and settle the rollout in flight; returns that rollout, if any."""
    ctx.audit(
        actor=by, action="halt", pipeline=name, outcome="halted", detail=reason, command=command
    )
    state = ctx.store.pipeline(name)
    if not state.inflight_rollout:
        return None
    rollout = ctx.store.rollout(state.inflight_rollout)
    if rollout is not None and rollout.status is RolloutStatus.awaiting_approval:
        approvals.cancel(ctx, rollout, "pipeline halted", by=by)
    # A queued or running rollout stops at the runner's next safe point (RecordedProgress.
    # check_cancelled): before its test gate or before its swap, never half-way through one.
    return rollout


def _inflight_note(rollout: Rollout) -> str:
    what = f"{rollout.kind.value.replace('_', ' ')} of `{rollout.version}` ({rollout.id})"
    if rollout.kind is not RolloutKind.deploy:
        return f"`{rollout.pipeline}`: the {what} in flight goes on: it restores service."
    if rollout.status is RolloutStatus.awaiting_approval:
        return f"`{rollout.pipeline}`: the {what} awaiting approval is cancelled."
    return (
        f"`{rollout.pipeline}`: the {what} in flight stops at its next safe point; "
        "a swap already under way finishes first."
    )


def _names(names: list[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)


def resume(ctx: Context, request: CommandRequest) -> Reply:
    if wants_help(request.text):
        return help_reply("/resume")
    args = parse_resume(request.text)
    pipeline = ctx.pipeline(args.pipeline)
    state = ctx.store.pipeline(args.pipeline)
    if not state.halted:
        return Reply(say("`{}` is not halted; deploys are open.", args.pipeline))
    forced = args.force_reason is not None
    if forced and not ctx.config.is_admin(request.user_id):
        ctx.audit(
            actor=request.user_id,
            action="resume",
            pipeline=args.pipeline,
            outcome="refused",
            detail="force_not_admin",
            command=request.typed,
        )
        raise NotAllowed(
            "Only admins may `/resume --force`.",
            hint=say("Admins: {}", Users.of(ctx.config.admins)) if ctx.config.admins else None,
        )
    if state.halted_incident and not forced:
        missing = incidents.missing_analysis(ctx, state.halted_incident)
        if missing:
            ctx.audit(
                actor=request.user_id,
                action="resume",
                pipeline=args.pipeline,
                outcome="refused",
                detail="missing: " + ", ".join(missing),
                command=request.typed,
            )
            raise ResumeRefused(
                say(
                    "`{}` stays halted until incident {} is analysed. Missing: {}.",
                    args.pipeline,
                    state.halted_incident,
                    ", ".join(missing),
                ),
                hint="Answer in the breach alert's thread (`why 1: …`, `root cause: …`, "
                "`test: <link>`) or with its *Five whys* button.",
            )
    ctx.store.reopen(args.pipeline)
    ctx.audit(
        actor=request.user_id,
        action="resume",
        pipeline=args.pipeline,
        outcome="forced" if forced else "resumed",
        detail=args.force_reason or "",
        command=request.typed,
    )
    if state.halted_incident:
        incidents.record_resume(
            ctx, state.halted_incident, request.user_id, args.force_reason or ""
        )
    ctx.notifier.pipeline_resumed(
        pipeline.channel, args.pipeline, request.user_id, args.force_reason or ""
    )
    how = f" (forced: {args.force_reason})" if forced else ""
    opened = say("`{}` is open again{}.", args.pipeline, how)
    waiting = queue.what_will_start(ctx, args.pipeline)
    return Reply(opened + " " + waiting if waiting is not None else opened)
