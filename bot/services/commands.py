"""What each slash command does, in domain terms: checks, state changes, a reply.

Everything here runs inside the ack (Redis and a local engine look-up only); slow work is handed
to the rollout runner. Refusals are ImmuneErrors, turned into an ephemeral reply by the app.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bot.domain import windows
from bot.domain.config import Pipeline
from bot.domain.errors import (
    AlreadyLive,
    Duplicate,
    ImmuneError,
    NotAllowed,
    NothingToRollBackTo,
    OutsideWindow,
    PipelineHalted,
    RolloutInFlight,
)
from bot.domain.images import ImageRef, resolve_version
from bot.domain.models import Rollout, RolloutKind, RolloutStatus, new_id
from bot.domain.parsing import (
    USAGE,
    parse_deploy,
    parse_pipeline,
    parse_rollback,
    wants_help,
)
from bot.reports import audit_export
from bot.services.context import Context
from bot.slack import messages
from bot.store.keys import Once


@dataclass(frozen=True)
class CommandRequest:
    """A slash command as the domain sees it."""

    command: str
    text: str
    user_id: str
    channel_id: str
    response_url: str | None = None
    request_id: str | None = None  # Slack's trigger_id: the same on a retried delivery

    @property
    def typed(self) -> str:
        return f"{self.command} {self.text}".strip()


@dataclass(frozen=True)
class Reply:
    text: str
    public: bool = False  # ephemeral unless said otherwise


def help_reply(command: str) -> Reply:
    return Reply(USAGE[command])


# Checks shared by /deploy and /rollback ----------------------------------------------------


def check_channel(ctx: Context, name: str, pipeline: Pipeline, request: CommandRequest) -> None:
    if not pipeline.may_command_from(request.channel_id):
        _refuse(ctx, request, name, "wrong_channel")
        allowed = (
            pipeline.command_channels
            if pipeline.command_channels is not None
            else [pipeline.channel]
        )
        if not allowed:
            raise NotAllowed(
                f"Commands for `{name}` are taken in no channel (its `command_channels` is empty).",
                hint="Ask the bot's operators to list a channel in the pipelines file.",
            )
        raise NotAllowed(
            f"Commands for `{name}` are taken in {', '.join(f'<#{c}>' for c in allowed)} only.",
            hint=f"Run `{request.typed}` there.",
        )


def check_deployer(ctx: Context, name: str, pipeline: Pipeline, request: CommandRequest) -> None:
    user = request.user_id
    if ctx.config.is_admin(user) or pipeline.deployers is None or user in pipeline.deployers:
        return
    _refuse(ctx, request, name, "not_a_deployer")
    helpers = list(dict.fromkeys(pipeline.deployers[:5] + ctx.config.admins[:3]))
    raise NotAllowed(
        f"You are not a deployer of `{name}`.",
        hint="Ask " + _mentions(helpers) + " to run it, or to add you to its `deployers`."
        if helpers
        else f"Nobody is listed: ask the bot's operators to add you to `deployers` of `{name}` in the pipelines file.",
    )


def check_approvable(ctx: Context, name: str, pipeline: Pipeline, request: CommandRequest) -> None:
    """Refuse at once a deploy that could never collect its approvals (requesters don't count)."""
    if pipeline.approvals is None:
        return
    others = [u for u in dict.fromkeys(pipeline.approvals.approvers) if u != request.user_id]
    if len(others) >= pipeline.approvals.required:
        return
    _refuse(ctx, request, name, "not_approvable")
    raise NotAllowed(
        f"`{name}` needs {pipeline.approvals.required} approval(s) from people other than the "
        f"requester, and only {len(others)} other approver(s) are listed.",
        hint=(f"Ask {_mentions(others)} to run it" if others else "Ask another deployer to run it")
        + ", or the bot's operators to list more approvers.",
    )


def admins_hint(ctx: Context) -> str:
    if ctx.config.admins:
        return "Admins: " + _mentions(ctx.config.admins) + "."
    return "No admins are listed in the pipelines file; ask the bot's operators."


def _mentions(users: list[str]) -> str:
    return ", ".join(f"<@{u}>" for u in users)


def _refuse(ctx: Context, request: CommandRequest, pipeline: str, why: str) -> None:
    ctx.audit(
        actor=request.user_id,
        action=request.command.lstrip("/"),
        pipeline=pipeline,
        outcome="refused",
        detail=why,
        command=request.typed,
    )


def answer_once(
    ctx: Context, kind: Once, request_id: str | None, what: str, handle: Callable[[], Reply]
) -> Reply:
    """Handle a request once across every replica (Slack redelivers, people double-click).

    The first delivery claims the request id (SET NX); a redelivery gets the first answer
    again, or, while the first is still being handled, says so. The answer is kept, refusals
    included, so a retry never runs the checks (and the audit) a second time.
    """
    if not request_id:
        return handle()
    if not ctx.store.claim_once(kind, request_id):
        earlier = ctx.store.first_answer(kind, request_id)
        if earlier is None:
            raise Duplicate(f"Already received {what}; it is being handled once.")
        raise Duplicate(f"Already answered {what} (it arrived again); the answer was:\n{earlier}")
    try:
        reply = handle()
    except ImmuneError as exc:
        ctx.store.record_answer(kind, request_id, exc.user_text())
        raise
    except Exception:
        # Nothing was answered: a redelivery may try again (the pipeline lock still holds).
        ctx.store.release_once(kind, request_id)
        raise
    ctx.store.record_answer(kind, request_id, reply.text)
    return reply


def claim(ctx: Context, name: str, rollout_id: str, ttl: float) -> None:
    holder = ctx.store.claim_rollout(name, rollout_id, ttl)
    if holder is not None:
        raise in_flight(ctx, name, holder)


def check_not_in_flight(
    ctx: Context, name: str, inflight_rollout: str, request: CommandRequest, image: ImageRef
) -> None:
    """Refuse early, before any engine look-up; `claim` still decides atomically."""
    if inflight_rollout:
        _audit_in_flight(
            ctx, name, request.user_id, request.command.lstrip("/"), image, request.typed
        )
        raise in_flight(ctx, name, inflight_rollout)


def _audit_in_flight(
    ctx: Context, name: str, actor: str, action: str, image: ImageRef, command: str
) -> None:
    ctx.audit(
        actor=actor,
        action=action,
        pipeline=name,
        outcome="refused",
        detail=f"rollout_in_flight; {image.reference}",
        command=command,
    )


def in_flight(ctx: Context, name: str, holder: str) -> RolloutInFlight:
    rollout = ctx.store.rollout(holder)
    if rollout is None:
        return RolloutInFlight(
            f"A rollout of `{name}` is in flight ({holder}).", hint="Wait for it to end."
        )
    return RolloutInFlight(
        f"A rollout of `{name}` is already in flight: {rollout.kind.value} of "
        f"`{rollout.version}` by <@{rollout.requested_by}>, {rollout.status.value}, "
        f"since {messages.slack_date(rollout.created_at)} ({rollout.id}).",
        hint="Wait for it to finish, or `/halt` the pipeline to stop it at a safe point.",
    )


# /deploy -------------------------------------------------------------------------------


def deploy(ctx: Context, request: CommandRequest) -> Reply:
    if wants_help(request.text):
        return help_reply("/deploy")
    return answer_once(
        ctx, Once.command, request.request_id, f"`{request.typed}`", lambda: _deploy(ctx, request)
    )


def _deploy(ctx: Context, request: CommandRequest) -> Reply:
    args = parse_deploy(request.text)
    pipeline = ctx.pipeline(args.pipeline)
    check_channel(ctx, args.pipeline, pipeline, request)
    check_deployer(ctx, args.pipeline, pipeline, request)
    forced = args.force_reason is not None
    if forced and not ctx.config.is_admin(request.user_id):
        _refuse(ctx, request, args.pipeline, "force_not_admin")
        raise NotAllowed(
            "Only admins may `--force` a deploy.",
            hint=admins_hint(ctx)
            + (" Without `--force` it waits for a deploy window." if pipeline.windows else ""),
        )
    state = ctx.store.pipeline(args.pipeline)
    if state.halted:
        _refuse(ctx, request, args.pipeline, "halted")
        raise PipelineHalted(
            f"`{args.pipeline}` is halted by <@{state.halted_by}> since "
            f"{messages.slack_date(state.halted_at or ctx.clock.now())}: {state.halted_reason or 'no reason given'}.",
            hint=f"Deploys resume after `/resume {args.pipeline}`"
            + (
                " (the incident's five whys, root cause and failing test come first)."
                if state.halted_incident
                else "."
            ),
        )
    if pipeline.windows and not forced:
        verdict = windows.check(pipeline.windows, ctx.config.zone, ctx.clock.now())
        if not verdict.open:
            _refuse(ctx, request, args.pipeline, "outside_window")
            raise OutsideWindow(
                f"`{args.pipeline}` is outside its deploy windows ({windows.describe(pipeline.windows, ctx.config.timezone)}).",
                hint=(
                    f"The next window opens {messages.slack_date(verdict.next_open)}."
                    if verdict.next_open is not None
                    else "No window is ever open: check the config."
                )
                + " Admins may deploy outside it with `--force <reason>` ("
                + (_mentions(ctx.config.admins) if ctx.config.admins else "none are listed")
                + ").",
            )
    check_approvable(ctx, args.pipeline, pipeline, request)
    image = resolve_version(pipeline.image, args.version)
    if state.live_version == image.version and not state.inflight_rollout:
        raise AlreadyLive(
            f"`{image.version}` is already live on `{args.pipeline}`.",
            hint=f"To restart it, deploy another version and `/rollback {args.pipeline} {image.version}`.",
        )
    check_not_in_flight(ctx, args.pipeline, state.inflight_rollout, request, image)
    if pipeline.pull == "never":
        # Fails fast, in the ack, for a typo; with pulls allowed the runner finds out.
        check_not_in_flight(ctx, args.pipeline, state.inflight_rollout, request, image)
    ctx.target(pipeline).locate(args.pipeline, pipeline, image)
    rollout = start_rollout(
        ctx,
        args.pipeline,
        pipeline,
        image,
        kind=RolloutKind.deploy,
        actor=request.user_id,
        reason=args.force_reason or "",
        response_url=request.response_url,
        command=request.typed,
    )
    return Reply(
        f"Deploying `{image.reference}` to `{args.pipeline}` ({rollout.id}); "
        f"progress in <#{pipeline.channel}>."
        if rollout.status is RolloutStatus.queued
        else f"`{args.pipeline}` needs approval: asked in <#{pipeline.channel}> ({rollout.id})."
    )


def start_rollout(
    ctx: Context,
    name: str,
    pipeline: Pipeline,
    image: ImageRef,
    *,
    kind: RolloutKind,
    actor: str,
    reason: str = "",
    response_url: str | None = None,
    command: str = "",
) -> Rollout:
    """Claim the pipeline and hand the rollout to a worker: the one path for every rollout."""
    state = ctx.store.pipeline(name)
    needs_approval = kind is RolloutKind.deploy and pipeline.approvals is not None
    rollout = Rollout(
        id=new_id("r"),
        pipeline=name,
        kind=kind,
        version=image.version,
        reference=image.reference,
        image_tag=image.tag,
        image_digest=image.digest,
        requested_by=actor,
        created_at=ctx.clock.now(),
        status=RolloutStatus.awaiting_approval if needs_approval else RolloutStatus.queued,
        from_version=state.live_version or None,
        reason=reason,
        channel=pipeline.channel,
        response_url=response_url,
        forced=bool(reason) and kind is RolloutKind.deploy,
    )
    ttl = ctx.limits.lock_ttl_seconds
    if needs_approval:
        assert pipeline.approvals is not None
        ttl = pipeline.approvals.expire + ttl
    try:
        claim(ctx, name, rollout.id, ttl)
    except RolloutInFlight:
        _audit_in_flight(ctx, name, actor, kind.value, image, command)
        raise
    ctx.store.create_rollout(rollout)
    ctx.audit(
        actor=actor,
        action=kind.value,
        pipeline=name,
        outcome="accepted" if not needs_approval else "awaiting_approval",
        rollout=rollout.id,
        detail=f"{image.reference}" + (f"; forced: {reason}" if rollout.forced else ""),
        command=command,
    )
    if needs_approval:
        from bot.services import approvals

        approvals.request_approval(ctx, rollout, pipeline)
    else:
        ctx.runner.submit(rollout.id)
    return rollout


# /rollback -----------------------------------------------------------------------------


def rollback(ctx: Context, request: CommandRequest) -> Reply:
    if wants_help(request.text):
        return help_reply("/rollback")
    return answer_once(
        ctx, Once.command, request.request_id, f"`{request.typed}`", lambda: _rollback(ctx, request)
    )


def _rollback(ctx: Context, request: CommandRequest) -> Reply:
    """Never blocked by deploy windows: a rollback restores service."""
    args = parse_rollback(request.text)
    pipeline = ctx.pipeline(args.pipeline)
    check_channel(ctx, args.pipeline, pipeline, request)
    check_deployer(ctx, args.pipeline, pipeline, request)
    state = ctx.store.pipeline(args.pipeline)
    if args.version is not None:
        image = resolve_version(pipeline.image, args.version)
        if image.version == state.live_version and not state.inflight_rollout:
            raise AlreadyLive(f"`{image.version}` is already live on `{args.pipeline}`.")
    else:
        if not state.last_good_version:
            raise NothingToRollBackTo(
                f"`{args.pipeline}` has no last good version yet.",
                hint=f"Name one: `/rollback {args.pipeline} <version>`.",
            )
        if state.last_good_version == state.live_version:
            versions = recent_versions(ctx, args.pipeline, exclude=state.live_version)
            raise NothingToRollBackTo(
                f"`{state.live_version}` is live and is already the last good version of `{args.pipeline}`.",
                hint=f"Name the version to go to: `/rollback {args.pipeline} <version>`"
                + (f" (recent: {', '.join(f'`{v}`' for v in versions)})." if versions else "."),
            )
        image = resolve_version(pipeline.image, state.last_good_version)
    check_not_in_flight(ctx, args.pipeline, state.inflight_rollout, request, image)
    ctx.target(pipeline).locate(args.pipeline, pipeline, image)
    rollout = start_rollout(
        ctx,
        args.pipeline,
        pipeline,
        image,
        kind=RolloutKind.rollback,
        actor=request.user_id,
        response_url=request.response_url,
        command=request.typed,
    )
    return Reply(
        f"Rolling `{args.pipeline}` back to `{image.version}` ({rollout.id}); progress in <#{pipeline.channel}>."
    )


def recent_versions(ctx: Context, name: str, exclude: str = "", limit: int = 5) -> list[str]:
    versions: list[str] = []
    for rollout in ctx.store.recent_rollouts(name, 30):
        if (
            rollout.status in (RolloutStatus.good, RolloutStatus.superseded)
            and rollout.version not in versions
        ) and rollout.version != exclude:
            versions.append(rollout.version)
    return versions[:limit]


# /pipeline -----------------------------------------------------------------------------


def pipeline_command(ctx: Context, request: CommandRequest) -> Reply:
    if wants_help(request.text):
        return help_reply("/pipeline")
    args = parse_pipeline(request.text)
    if args.view == "history":
        assert args.subject is not None
        ctx.pipeline(args.subject)
        return Reply(
            messages.history_text(
                args.subject,
                ctx.store.recent_rollouts(args.subject, 15),
                ctx.store.audit_entries(pipeline=args.subject, limit=15),
            )
        )
    if args.view == "audit":
        assert args.subject is not None
        ctx.pipeline(args.subject)
        return Reply(audit_export.slack_reply(export_audit(ctx, args.subject)))
    if args.view == "incident":
        from bot.services import incidents

        assert args.subject is not None
        return Reply(incidents.export_markdown(ctx, args.subject))
    names = [args.subject] if args.subject else sorted(ctx.config.pipelines)
    parts = []
    for name in names:
        pipeline = ctx.pipeline(name)
        state = ctx.store.pipeline(name)
        inflight = ctx.store.rollout(state.inflight_rollout) if state.inflight_rollout else None
        watching = ctx.store.rollout(state.live_rollout) if state.live_rollout else None
        engine = ctx.target(pipeline).live(name, pipeline) if args.subject else None
        parts.append(messages.status_text(name, pipeline, state, inflight, watching, engine))
    return Reply("\n\n".join(parts))


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
