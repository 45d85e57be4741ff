"""/deploy and /rollback, and the one path every rollout starts by.

Everything here runs inside Slack's 3 s ack: Redis, for `pull: never` a local look-up of the
image on the engine, and for a registry image one manifest request that pins the tag to its
digest (bounded by REGISTRY_LOOKUP_SECONDS; past it the rollout resolves the tag first).
Pulling is slow, so with pulls allowed the runner's `locate image` step pulls, and tells the
requester if the image cannot be had.
"""

from __future__ import annotations

from collections.abc import Callable

from bot.domain import windows
from bot.domain.config import Pipeline
from bot.domain.errors import (
    AlreadyLive,
    ImageNotFound,
    NotAllowed,
    NothingToRollBackTo,
    OutsideWindow,
    PipelineHalted,
    RolloutInFlight,
    UsageError,
)
from bot.domain.images import ImageRef, resolve_version, short_digest
from bot.domain.models import (
    PipelineState,
    Rollout,
    RolloutKind,
    RolloutStatus,
    TrafficSplit,
    new_id,
)
from bot.domain.parsing import (
    DeployArgs,
    RollbackArgs,
    parse_deploy,
    parse_rollback,
    wants_help,
)
from bot.domain.text import Channel, Moment, User, Users, as_text, say
from bot.services import approvals, traffic
from bot.services.context import Context
from bot.services.pinning import (
    Pinned,
    from_registry,
    image_running,
    image_that_ran,
    pin_in_ack,
    tag_moved,
)
from bot.services.policy import (
    admins_hint,
    audit_in_flight,
    check_approvable,
    check_engine,
    check_may_run,
    check_not_in_flight,
    in_flight,
    refuse,
)
from bot.services.requests import (
    CommandRequest,
    Reply,
    answer_once,
    help_reply,
    pipeline_snapshot,
)
from bot.store.keys import Once
from bot.store.store import PipelineSnapshot

# /deploy -------------------------------------------------------------------------------


def deploy(ctx: Context, request: CommandRequest) -> Reply:
    return _once(ctx, request, _deploy, parse_deploy)


def _once(
    ctx: Context,
    request: CommandRequest,
    handle: Callable[[Context, CommandRequest], Reply],
    parse: Callable[[str], DeployArgs | RollbackArgs],
) -> Reply:
    """Its usage when asked for; else the command, handled once however often it arrives,
    with the state of the pipeline it names read with its claim."""
    if wants_help(request.text):
        return help_reply(request.command)
    return answer_once(
        ctx,
        Once.command,
        request.request_id,
        f"`{request.typed}`",
        lambda: handle(ctx, request),
        reads=_configured_pipeline(ctx, request.text, parse),
    )


def _configured_pipeline(
    ctx: Context, text: str, parse: Callable[[str], DeployArgs | RollbackArgs]
) -> str | None:
    """The configured pipeline the command names; None when it names none (the handler
    parses again and refuses, once)."""
    try:
        name = parse(text).pipeline
    except UsageError:
        return None
    return name if name in ctx.config.pipelines else None


def _deploy(ctx: Context, request: CommandRequest) -> Reply:
    args = parse_deploy(request.text)
    try:
        return _deploy_args(ctx, request, args)
    except (RolloutInFlight, OutsideWindow) as refusal:
        # Busy or shut: the deploy may wait its turn instead (a forced one never waits).
        if args.force_reason is None:
            refusal.queue_offer = (args.pipeline, args.version)
        raise


def _deploy_args(ctx: Context, request: CommandRequest, args: DeployArgs) -> Reply:
    pipeline = check_may_run(ctx, args.pipeline, request)
    check_engine(ctx, args.pipeline, pipeline, request)
    forced = args.force_reason is not None
    if forced and not ctx.config.is_admin(request.user_id):
        refuse(ctx, request, args.pipeline, "force_not_admin")
        raise NotAllowed(
            "Only admins may `--force` a deploy.",
            hint=admins_hint(ctx)
            + (" Without `--force` it waits for a deploy window." if pipeline.windows else ""),
        )
    snapshot = pipeline_snapshot(ctx, args.pipeline)
    state = snapshot.state
    if state.halted:
        refuse(ctx, request, args.pipeline, "halted")
        raise PipelineHalted(
            say(
                "`{}` is halted by {} since {}: {}.",
                args.pipeline,
                User(state.halted_by),
                Moment(state.halted_at or ctx.clock.now()),
                state.halted_reason or "no reason given",
            ),
            hint=say("Deploys resume after `/resume {}`", args.pipeline)
            + (
                " (the incident's five whys, root cause and failing test come first)."
                if state.halted_incident
                else "."
            ),
        )
    if pipeline.windows and not forced:
        verdict = windows.check(pipeline.windows, ctx.config.zone, ctx.clock.now())
        if not verdict.open:
            refuse(ctx, request, args.pipeline, "outside_window")
            raise OutsideWindow(
                say(
                    "`{}` is outside its deploy windows ({}).",
                    args.pipeline,
                    windows.describe(pipeline.windows, ctx.config.timezone),
                ),
                hint=(
                    say("The next window opens {}.", Moment(verdict.next_open))
                    if verdict.next_open is not None
                    else as_text("No window is ever open: check the config.")
                )
                + " Admins may deploy outside it with `--force <reason>` ("
                + (
                    say("{}", Users.of(ctx.config.admins))
                    if ctx.config.admins
                    else as_text("none are listed")
                )
                + ").",
            )
    check_approvable(ctx, args.pipeline, pipeline, request)
    pinned = Pinned(resolve_version(pipeline.image, args.version))
    # Busy is said before the registry is asked: a refusal never waits for a lookup.
    check_not_in_flight(ctx, snapshot, request, pinned.image)
    if from_registry(pipeline):
        try:
            pinned = pin_in_ack(ctx.target(pipeline), pipeline, pinned.image)
        except ImageNotFound as missing:
            refuse(ctx, request, args.pipeline, missing.code)
            raise
    image = pinned.image
    if (
        state.live_version == image.version
        and not state.inflight_rollout
        and not _tag_moved_since_live(snapshot, image)
    ):
        refuse(ctx, request, args.pipeline, "already_live")
        raise AlreadyLive(
            say("`{}` is already live on `{}`.", image.version, args.pipeline),
            hint=say(
                "To restart it, deploy another version and `/rollback {} {}`.",
                args.pipeline,
                image.version,
            ),
        )
    locate_in_ack(ctx, args.pipeline, pipeline, image)
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
        state=state,
    )
    if rollout.status is RolloutStatus.queued:
        return Reply(
            say(
                "Deploying {} to `{}` ({}); progress in {}.",
                deploying_words(pinned),
                args.pipeline,
                rollout.id,
                Channel(pipeline.channel),
            )
        )
    return Reply(
        say(
            "`{}` needs approval: asked in {} ({}).",
            args.pipeline,
            Channel(pipeline.channel),
            rollout.id,
        )
    )


def deploying_words(pinned: Pinned) -> str:
    """`repo:1.4.2` pinned to `sha256:…` (a registry image), or the reference as it is."""
    image = pinned.image
    if pinned.deferred:
        return (
            f"`{image.tagged}` (the registry did not answer in time: "
            "the rollout resolves the tag to its digest first)"
        )
    if image.tag and image.digest:
        return f"`{image.tagged}` (digest `{short_digest(image.digest)}`)"
    return f"`{image.reference}`"


def _tag_moved_since_live(snapshot: PipelineSnapshot, image: ImageRef) -> bool:
    """The live version's tag now points at another digest (CI pushed it again): deploying
    the same tag is then a new image, not a no-op. The live rollout is the snapshot's, read
    with the pipeline's state; without a digest to compare its record is not even parsed."""
    if image.digest is None:
        return False
    live = snapshot.live
    if live is None:
        return False
    return live.image_digest not in (None, image.digest)


def locate_in_ack(ctx: Context, name: str, pipeline: Pipeline, image: ImageRef) -> None:
    """With `pull: never`, a local look-up refuses a typo at once (ImageNotFound); a pull is
    too slow for the ack, so with pulls allowed the runner's first step locates the image."""
    if pipeline.pull == "never":
        ctx.target(pipeline).locate(name, pipeline, image)


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
    notes: list[str] | None = None,
    traffic_split: TrafficSplit | None = None,
    state: PipelineState | None = None,
) -> Rollout:
    """Claim the pipeline and hand the rollout to a worker: the one path for every rollout.

    `traffic_split`: where a rollback behind a proxy sends the requests, known at once
    (traffic.way_back); recorded before the proxy is told, like every split. `state`: the
    pipeline's, when the caller has just read it (the lock's claim decides, not this)."""
    state = state if state is not None else ctx.store.pipeline(name)
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
        notes=list(notes or []),
        traffic=traffic_split,
    )
    ttl = ctx.limits.lock_ttl_seconds
    if pipeline.approvals is not None and needs_approval:
        ttl = pipeline.approvals.expire + ttl
    accepted = ctx.store.audit_record(
        actor=actor,
        action=kind.value,
        pipeline=name,
        outcome="accepted" if not needs_approval else "awaiting_approval",
        rollout=rollout.id,
        detail=f"{image.reference}" + (f"; forced: {reason}" if rollout.forced else ""),
        command=command,
        max_age_days=ctx.limits.audit_max_age_days,
    )
    # The lock, the record and the audit entry in one round trip: behind a proxy a rollback
    # moves the requests right after (move_now), inside Slack's ack, and only then logs the
    # entry (a log line costs about as much as the runtime API's round trip).
    holder = ctx.store.open_rollout(rollout, ttl, accepted)
    if holder is not None:
        audit_in_flight(ctx, name, actor, kind.value, image, command)
        raise in_flight(ctx, name, holder)
    try:
        if traffic_split is not None:
            traffic.move_now(ctx, rollout, pipeline)
    finally:
        ctx.store.log_audit(accepted)
    if pipeline.approvals is not None and needs_approval:
        approvals.request_approval(ctx, rollout, pipeline)
        return rollout
    ctx.runner.submit(rollout.id)
    return rollout


# /rollback -----------------------------------------------------------------------------


def rollback(ctx: Context, request: CommandRequest) -> Reply:
    return _once(ctx, request, _rollback, parse_rollback)


def _rollback(ctx: Context, request: CommandRequest) -> Reply:
    """Never blocked by deploy windows: a rollback restores service."""
    args = parse_rollback(request.text)
    pipeline = check_may_run(ctx, args.pipeline, request)
    check_engine(ctx, args.pipeline, pipeline, request)
    snapshot = pipeline_snapshot(ctx, args.pipeline)
    state = snapshot.state
    if args.version is not None:
        # The digest that version ran with, when it ran here: a tag may have moved since. A
        # baseline still running behind the proxy runs what the rollout that started it ran.
        baseline = traffic.running_baseline(
            snapshot.live, pipeline, resolve_version(pipeline.image, args.version).version
        )
        if baseline is not None and baseline.baseline_reference:
            # What its container runs, kept with the split: the way back reads no record.
            image = image_running(pipeline, args.version, baseline.baseline_reference)
        else:
            image = image_that_ran(
                ctx.store,
                args.pipeline,
                pipeline,
                args.version,
                baseline.baseline_rollout if baseline is not None else "",
            )
        if image.version == state.live_version and not state.inflight_rollout:
            refuse(ctx, request, args.pipeline, "already_live")
            raise AlreadyLive(say("`{}` is already live on `{}`.", image.version, args.pipeline))
    else:
        if not state.last_good_version:
            raise NothingToRollBackTo(
                say("`{}` has no last good version yet.", args.pipeline),
                hint=say("Name one: `/rollback {} <version>`.", args.pipeline),
            )
        if state.last_good_version == state.live_version:
            versions = recent_versions(ctx, args.pipeline, exclude=state.live_version)
            refusal = NothingToRollBackTo(
                say(
                    "`{}` is live and is already the last good version of `{}`.",
                    state.live_version,
                    args.pipeline,
                ),
                hint=say("Name the version to go to: `/rollback {} <version>`", args.pipeline)
                + (
                    say(" (recent: {}).", ", ".join(f"`{v}`" for v in versions))
                    if versions
                    else as_text(".")
                ),
            )
            refusal.pick_version_of = args.pipeline  # a form offers the earlier good ones
            raise refusal
        image = image_that_ran(
            ctx.store, args.pipeline, pipeline, state.last_good_version, state.last_good_rollout
        )
    check_not_in_flight(ctx, snapshot, request, image)
    # Back to the live version's baseline behind a proxy: it runs, so no image look-up; the
    # split is recorded with the rollback and the runner moves the requests first.
    back = traffic.way_back(snapshot.live, pipeline, image.version)
    if back is None:
        locate_in_ack(ctx, args.pipeline, pipeline, image)
    moved = tag_moved(ctx.target(pipeline), pipeline, image) if from_registry(pipeline) else None
    moved_note = (
        f"tag `{image.tag}` now points at `{short_digest(moved)}`; rolling back to "
        f"`{short_digest(image.digest)}`, the digest that ran"
        if moved is not None and image.digest is not None
        else ""
    )
    rollout = start_rollout(
        ctx,
        args.pipeline,
        pipeline,
        image,
        kind=RolloutKind.rollback,
        actor=request.user_id,
        response_url=request.response_url,
        command=request.typed,
        notes=[moved_note] if moved_note else None,
        traffic_split=back,
        state=state,
    )
    pinned = f" (`{short_digest(image.digest)}`)" if image.digest else ""
    return Reply(
        say(
            "Rolling `{}` back to `{}`{} ({}); progress in {}.",
            args.pipeline,
            image.version,
            pinned,
            rollout.id,
            Channel(pipeline.channel),
        )
        + (say("\nNote: {}.", moved_note) if moved_note else "")
    )


def recent_versions(ctx: Context, name: str, exclude: str = "", limit: int = 5) -> list[str]:
    versions: list[str] = []
    for rollout in ctx.store.recent_rollouts(name, 30):
        if (
            rollout.status in (RolloutStatus.good, RolloutStatus.superseded)
            and rollout.version not in versions
            and rollout.version != exclude
        ):
            versions.append(rollout.version)
    return versions[:limit]
