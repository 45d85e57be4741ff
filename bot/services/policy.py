"""Who may do what, where: the checks /deploy, /rollback and the rollback button share.

Every refusal is audited (outcome `refused`, with why) before it is raised as an ImmuneError.
"""

from __future__ import annotations

from bot.domain.config import Pipeline
from bot.domain.errors import EngineUnreachable, NotAllowed, RolloutInFlight
from bot.domain.images import ImageRef
from bot.domain.models import Rollout
from bot.domain.text import Channel, Channels, Moment, Text, User, Users, as_text, say
from bot.services.context import Context
from bot.services.requests import CommandRequest, audit_refusal
from bot.store.store import PipelineSnapshot


def refuse(ctx: Context, request: CommandRequest, pipeline: str, why: str) -> None:
    """Audit a refusal of `request` (the caller raises the error that explains it)."""
    audit_refusal(
        ctx,
        actor=request.user_id,
        action=request.action,
        pipeline=pipeline,
        detail=why,
        command=request.typed,
    )


def check_engine(ctx: Context, name: str, pipeline: Pipeline, request: CommandRequest) -> None:
    """Refuse a deploy or rollback while the pipeline's engine does not answer: it could only
    wait for the engine, holding the pipeline, and the person would not know why."""
    since = ctx.engines.down_since(pipeline.target)
    if since is None:
        return
    refuse(ctx, request, name, "engine_unreachable")
    raise EngineUnreachable(
        say(
            "The engine `{}` deploys to does not answer (since {}): nothing can be deployed "
            "or rolled back until it is back.",
            name,
            Moment(since),
        ),
        hint=say(
            "{} is told when it is back; run the command again then.", Channel(pipeline.channel)
        ),
    )


def check_may_run(ctx: Context, name: str, request: CommandRequest) -> Pipeline:
    """The pipeline `name`, if the request comes from one of its channels and a deployer."""
    pipeline = ctx.pipeline(name)
    check_channel(ctx, name, pipeline, request)
    check_deployer(ctx, name, pipeline, request)
    return pipeline


def check_channel(ctx: Context, name: str, pipeline: Pipeline, request: CommandRequest) -> None:
    if pipeline.may_command_from(request.channel_id):
        return
    refuse(ctx, request, name, "wrong_channel")
    allowed = (
        pipeline.command_channels if pipeline.command_channels is not None else [pipeline.channel]
    )
    if not allowed:
        raise NotAllowed(
            say(
                "Commands for `{}` are taken in no channel (its `command_channels` is empty).", name
            ),
            hint="Ask the bot's operators to list a channel in the pipelines file.",
        )
    raise NotAllowed(
        say("Commands for `{}` are taken in {} only.", name, Channels.of(allowed)),
        hint=say("Run `{}` there.", request.typed),
    )


def check_deployer(ctx: Context, name: str, pipeline: Pipeline, request: CommandRequest) -> None:
    user = request.user_id
    if ctx.config.is_admin(user) or pipeline.deployers is None or user in pipeline.deployers:
        return
    refuse(ctx, request, name, "not_a_deployer")
    helpers = list(dict.fromkeys(pipeline.deployers[:5] + ctx.config.admins[:3]))
    raise NotAllowed(
        say("You are not a deployer of `{}`.", name),
        hint=say("Ask {} to run it, or to add you to its `deployers`.", Users.of(helpers))
        if helpers
        else say(
            "Nobody is listed: ask the bot's operators to add you to `deployers` of `{}` in the "
            "pipelines file.",
            name,
        ),
    )


def check_approvable(ctx: Context, name: str, pipeline: Pipeline, request: CommandRequest) -> None:
    """Refuse at once a deploy that could never collect its approvals (requesters don't count)."""
    if pipeline.approvals is None:
        return
    others = [u for u in dict.fromkeys(pipeline.approvals.approvers) if u != request.user_id]
    if len(others) >= pipeline.approvals.required:
        return
    refuse(ctx, request, name, "not_approvable")
    ask = (
        say("Ask {} to run it", Users.of(others))
        if others
        else as_text("Ask another deployer to run it")
    )
    raise NotAllowed(
        say(
            "`{}` needs {} approval(s) from people other than the requester, and only {} other "
            "approver(s) are listed.",
            name,
            str(pipeline.approvals.required),
            str(len(others)),
        ),
        hint=ask + ", or the bot's operators to list more approvers.",
    )


def admins_hint(ctx: Context) -> Text:
    if ctx.config.admins:
        return say("Admins: {}.", Users.of(ctx.config.admins))
    return as_text("No admins are listed in the pipelines file; ask the bot's operators.")


def check_not_in_flight(
    ctx: Context, snapshot: PipelineSnapshot, request: CommandRequest, image: ImageRef
) -> None:
    """Refuse early, before any engine look-up; the lock's claim still decides atomically."""
    name, holder = snapshot.state.name, snapshot.state.inflight_rollout
    if holder:
        audit_in_flight(ctx, name, request.user_id, request.action, image, request.typed)
        raise in_flight(ctx, name, holder, snapshot.inflight)


def audit_in_flight(
    ctx: Context, name: str, actor: str, action: str, image: ImageRef, command: str
) -> None:
    audit_refusal(
        ctx,
        actor=actor,
        action=action,
        pipeline=name,
        detail=f"rollout_in_flight; {image.reference}",
        command=command,
    )


def in_flight(
    ctx: Context, name: str, holder: str, known: Rollout | None = None
) -> RolloutInFlight:
    """The refusal naming the rollout in flight; `known` is its record if already read."""
    rollout = known if known is not None and known.id == holder else ctx.store.rollout(holder)
    if rollout is None:
        return RolloutInFlight(
            say("A rollout of `{}` is in flight ({}).", name, holder), hint="Wait for it to end."
        )
    return RolloutInFlight(
        say(
            "A rollout of `{}` is already in flight: {} of `{}` by {}, {}, since {} ({}).",
            name,
            rollout.kind.value,
            rollout.version,
            User(rollout.requested_by),
            rollout.status.value,
            Moment(rollout.created_at),
            rollout.id,
        ),
        hint="Wait for it to finish, or `/halt` the pipeline to stop it at a safe point.",
    )
