"""A held canary step answered by a person: the `canary_promote` and `canary_abort` buttons.

A step that ended with a KPI it could not judge (not enough data) holds and asks the channel
(services/traffic.py, `hold`). A deployer answers, once per held step: promote moves on to the
next step; abort sends all traffic back to the baseline with a rollback to it (started by that
person, audited as theirs), which supersedes the canary when it goes live.
"""

from __future__ import annotations

from bot.domain.errors import ImmuneError
from bot.domain.models import RolloutKind, RolloutStatus
from bot.domain.text import User, say
from bot.services import traffic
from bot.services.context import Context
from bot.services.deploys import start_rollout
from bot.services.pinning import image_that_ran
from bot.services.policy import check_deployer
from bot.services.requests import CommandRequest, Reply
from bot.store.keys import Once

PROMOTE = "promote"
ABORT = "abort"


def decide(ctx: Context, rollout_id: str, user: str, decision: str, request_id: str) -> Reply:
    rollout = ctx.store.rollout(rollout_id)
    if rollout is None:
        return Reply(say("There is no rollout {}.", rollout_id))
    pipeline = ctx.pipeline(rollout.pipeline)
    split = rollout.traffic
    if rollout.status is not RolloutStatus.live or split is None or split.held_since is None:
        return Reply(
            say(
                "The canary of `{}` to `{}` is no longer waiting for an answer.",
                rollout.pipeline,
                rollout.version,
            )
        )
    request = CommandRequest(
        command=f"canary_{decision}",
        text=f"{rollout.pipeline} {rollout.version}",
        user_id=user,
        channel_id=rollout.channel,
        request_id=request_id,
    )
    check_deployer(ctx, rollout.pipeline, pipeline, request)
    subject = f"{rollout.id}:{split.step}"
    if not ctx.store.claim_once(Once.canary_decision, subject, holder=user):
        holder = ctx.store.once_holder(Once.canary_decision, subject)
        return Reply(
            say("{} already answered for this step.", User(holder) if holder else "Someone")
        )
    if decision == PROMOTE:
        moved = traffic.advance(ctx, rollout, pipeline, ready=True)
        if moved is None:
            ctx.store.release_once(Once.canary_decision, subject)
            return Reply(say("The canary of `{}` could not move on now.", rollout.pipeline))
        ctx.audit(
            actor=user,
            action="canary.promote",
            pipeline=rollout.pipeline,
            rollout=rollout.id,
            detail=traffic.describe(moved, rollout.version),
        )
        return Reply(
            say("Promoted: {}.", traffic.describe(moved, rollout.version)),
        )
    try:
        back = start_rollout(
            ctx,
            rollout.pipeline,
            pipeline,
            image_that_ran(ctx.store, rollout.pipeline, pipeline, split.baseline_version),
            kind=RolloutKind.rollback,
            actor=user,
            reason=f"canary of {rollout.version} aborted",
            command=request.typed,
            traffic_split=traffic.way_back(rollout, pipeline, split.baseline_version),
        )
    except ImmuneError:
        ctx.store.release_once(Once.canary_decision, subject)  # nothing started: try again
        raise
    traffic.close_question(ctx, rollout, pipeline)
    ctx.audit(
        actor=user,
        action="canary.abort",
        pipeline=rollout.pipeline,
        rollout=rollout.id,
        detail=f"rolling back to {split.baseline_version} ({back.id})",
    )
    return Reply(
        say(
            "Aborted: rolling `{}` back to `{}` ({}).",
            rollout.pipeline,
            split.baseline_version,
            back.id,
        )
    )
