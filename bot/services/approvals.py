"""Approval requests for protected pipelines (DESIGN.md: `approvals`, deploy_approve/reject).

A request is the rollout itself in status `awaiting_approval`, holding the pipeline's lock for
`expire` plus the lock TTL. Every decision is one atomic change of the rollout
(`Store.update_rollout`, WATCH/MULTI) with its checks inside the change, so whichever replica
and however many presses arrive at once, exactly one change completes the approvals, and only
that one submits the rollout. Expiry is judged by the bot's clock on every press and on every
replica's recovery pass, so a request expires even when nobody presses and after a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from bot.domain.approvals import APPROVED, REJECTED, RequestState, approvals_given, request_state
from bot.domain.clock import Clock
from bot.domain.config import Approvals, Pipeline
from bot.domain.errors import ImmuneError, NotAllowed, NotFound
from bot.domain.models import Approval, Rollout, RolloutStatus
from bot.domain.text import Channel, Moment, Text, User, Users, say
from bot.ports import Notifier
from bot.services.context import Context
from bot.services.outcomes import record_outcome
from bot.services.requests import Reply, answer_once
from bot.store.keys import Once
from bot.store.store import Store

logger = logging.getLogger(__name__)

# Renders of one request racing each other settle within a few rounds.
MAX_RENDERS = 5
EXPIRED_REASON = "approval request expired"


def expires_at(rollout: Rollout, policy: Approvals) -> float:
    return rollout.created_at + policy.expire


# Showing the request ----------------------------------------------------------------------


def _looks(rollout: Rollout, policy: Approvals) -> tuple[object, ...]:
    """What the message shows: a re-render is needed only when this changes."""
    state = request_state(rollout, policy)
    decisions = tuple((a.user, a.decision) for a in rollout.approvals)
    return state, decisions, rollout.error if state is RequestState.cancelled else ""


def _show(store: Store, notifier: Notifier, policy: Approvals, rollout_id: str) -> None:
    """Post or update the request until the message shows what Redis holds.

    Two decisions rendered at once may land in either order; whoever rendered reads the
    rollout again and renders once more if it changed meanwhile, so the last word is right.
    """
    shown: tuple[object, ...] | None = None
    for _ in range(MAX_RENDERS):
        rollout = store.rollout(rollout_id)
        if rollout is None or _looks(rollout, policy) == shown:
            return
        ts = notifier.approval_changed(rollout, policy, expires_at(rollout, policy))
        shown = _looks(rollout, policy)
        if ts and ts != rollout.approval_ts:
            _keep_ts(store, rollout_id, ts)


def _keep_ts(store: Store, rollout_id: str, ts: str) -> None:
    def keep(rollout: Rollout) -> None:
        rollout.approval_ts = ts

    store.update_rollout(rollout_id, keep)


def _show_quietly(store: Store, notifier: Notifier, policy: Approvals, rollout_id: str) -> None:
    # The decision is recorded already; a Slack hiccup must not undo or hide it.
    try:
        _show(store, notifier, policy, rollout_id)
    except Exception:
        logger.exception("could not update the approval request of %s", rollout_id)


def _tell_requester(notifier: Notifier, rollout: Rollout, text: Text) -> None:
    try:
        notifier.tell_requester(rollout.response_url, text)
    except Exception:
        logger.exception("could not tell the requester of %s", rollout.id)


# Asking ------------------------------------------------------------------------------------


def request_approval(ctx: Context, rollout: Rollout, pipeline: Pipeline) -> None:
    """Post the approval request in the pipeline's channel."""
    policy = pipeline.approvals
    assert policy is not None
    try:
        _show(ctx.store, ctx.notifier, policy, rollout.id)
    except Exception as exc:
        logger.exception("could not post the approval request of %s", rollout.id)
        why = f"could not post the approval request: {type(exc).__name__}"
        _close(
            ctx.store,
            ctx.clock,
            rollout.id,
            RolloutStatus.cancelled,
            "the approval request could not be posted",
            detail=lambda _: why,
        )
        raise ImmuneError(
            say(
                "Could not ask for approval in {}, so nothing will be deployed.",
                Channel(pipeline.channel),
            ),
            hint="Check that immune is a member of that channel, then `/deploy` again.",
        ) from exc


# Ending a request without approval ---------------------------------------------------------


def _close(
    store: Store,
    clock: Clock,
    rollout_id: str,
    status: RolloutStatus,
    reason: str,
    by: str = "",
    *,
    detail: Callable[[Rollout], str],
) -> Rollout | None:
    """End a pending request (atomically: only if still pending) and free the pipeline, in
    one write, then record the outcome (`detail` says what the audit entry adds)."""
    now = clock.now()
    closed = False

    def close(rollout: Rollout) -> None:
        nonlocal closed
        closed = rollout.status is RolloutStatus.awaiting_approval
        if closed:
            rollout.status = status
            rollout.error = reason
            rollout.ended_by = by
            rollout.finished_at = now

    rollout = store.settle_rollout(rollout_id, close)
    if not closed:
        return None
    record_outcome(store, rollout, status.value, detail=detail(rollout))
    return rollout


def _closed_words(rollout: Rollout) -> Text:
    what = say(
        "Your request to deploy `{}` to `{}` ({})", rollout.reference, rollout.pipeline, rollout.id
    )
    if rollout.status is RolloutStatus.rejected:
        return what + " was " + rollout.why() + ": nothing was deployed."
    if rollout.status is RolloutStatus.expired:
        return what + " expired without enough approvals: nothing was deployed."
    return what + " was cancelled (" + rollout.why() + "): nothing was deployed."


def _after_close(
    store: Store, notifier: Notifier, policy: Approvals | None, rollout: Rollout
) -> None:
    if policy is not None:
        _show_quietly(store, notifier, policy, rollout.id)
    _tell_requester(notifier, rollout, _closed_words(rollout))


def expire_rollout(
    store: Store,
    notifier: Notifier,
    clock: Clock,
    policy: Approvals | None,
    rollout_id: str,
    detail: str = "",
) -> Rollout | None:
    """Expire a pending request: its message says so and loses its buttons."""
    rollout = _close(
        store,
        clock,
        rollout_id,
        RolloutStatus.expired,
        EXPIRED_REASON,
        detail=lambda closed: detail or f"{len(closed.approvals)} decision(s) recorded",
    )
    if rollout is None:
        return None
    _after_close(store, notifier, policy, rollout)
    return rollout


def expire_if_due(ctx: Context, rollout_id: str, *, orphaned: bool) -> bool:
    """The recovery pass: True if `rollout_id` is an approval request (expired now if due).

    Due means: past its expiry by the bot's clock, or orphaned (its lock, taken for `expire`
    plus the lock TTL, lapsed: every bot that could have kept it was gone).
    """
    rollout = ctx.store.rollout(rollout_id)
    if rollout is None or rollout.status is not RolloutStatus.awaiting_approval:
        return False
    pipeline = ctx.config.pipelines.get(rollout.pipeline)
    policy = pipeline.approvals if pipeline is not None else None
    due = policy is not None and ctx.clock.now() >= expires_at(rollout, policy)
    if due or orphaned:
        expire_rollout(
            ctx.store,
            ctx.notifier,
            ctx.clock,
            policy,
            rollout_id,
            detail="its bot stopped; the lock lapsed" if orphaned and not due else "",
        )
    return True


def cancel(ctx: Context, rollout: Rollout, reason: str, *, by: str = "") -> None:
    """End a pending approval request (a halt by `by`) and update its message."""
    closed = _close(
        ctx.store,
        ctx.clock,
        rollout.id,
        RolloutStatus.cancelled,
        reason,
        by,
        detail=lambda ended: ended.why().plain(),
    )
    if closed is None:
        return
    pipeline = ctx.config.pipelines.get(closed.pipeline)
    _after_close(ctx.store, ctx.notifier, pipeline.approvals if pipeline else None, closed)


# Deciding ----------------------------------------------------------------------------------


@dataclass
class _Recorded:
    outcome: str = ""  # settled | expired | rejected | already | partial | approved


def _settled_text(rollout: Rollout, policy: Approvals) -> Text:
    state = request_state(rollout, policy)
    if state is RequestState.approved:
        names = Users.of(a.user for a in approvals_given(rollout, policy))
        return say("{} is already approved by {}; the rollout is on its way.", rollout.id, names)
    if state is RequestState.rejected:
        return say("{} was already ", rollout.id) + rollout.why() + "; nothing was deployed."
    if state is RequestState.expired:
        return say(
            "This approval request expired {}; nothing was deployed. {} may `/deploy` again to "
            "ask anew.",
            Moment(rollout.finished_at or rollout.created_at),
            User(rollout.requested_by),
        )
    return say("This approval request was cancelled (") + rollout.why() + "); nothing was deployed."


def decide(ctx: Context, rollout_id: str, user: str, decision: str, request_id: str) -> Reply:
    """An approver pressed deploy_approve or deploy_reject; exactly once per press."""
    if decision not in (APPROVED, REJECTED):
        raise ValueError(f"unknown decision {decision!r}")
    return answer_once(
        ctx,
        Once.action,
        request_id if request_id.strip(":") else None,
        "that button press",
        lambda: _decide(ctx, rollout_id, user, decision),
    )


def _refuse(ctx: Context, user: str, action: str, rollout: Rollout, why: str) -> None:
    ctx.audit(
        actor=user,
        action=action,
        pipeline=rollout.pipeline,
        outcome="refused",
        rollout=rollout.id,
        detail=why,
        command=f"{action} button",
    )


def _decide(ctx: Context, rollout_id: str, user: str, decision: str) -> Reply:
    if not rollout_id:
        raise NotFound("That button names no approval request.")
    rollout = ctx.store.rollout(rollout_id)
    if rollout is None:
        raise NotFound(say("There is no approval request `{}`.", rollout_id))
    action = "approve" if decision == APPROVED else "reject"
    pipeline = ctx.config.pipelines.get(rollout.pipeline)
    policy = pipeline.approvals if pipeline is not None else None
    if policy is None:
        # Fail closed: with no policy, nobody may approve; the request expires on its own.
        _refuse(ctx, user, action, rollout, "no_approval_policy")
        raise NotAllowed(
            say(
                "`{}` lists no approvers any more, so nobody can decide {}.",
                rollout.pipeline,
                rollout.id,
            ),
            hint="It expires on its own; ask the bot's operators about the pipelines file.",
        )
    if rollout.status is RolloutStatus.awaiting_approval and ctx.clock.now() >= expires_at(
        rollout, policy
    ):
        expire_rollout(ctx.store, ctx.notifier, ctx.clock, policy, rollout.id)
        rollout = ctx.store.rollout(rollout.id) or rollout
    if rollout.status is not RolloutStatus.awaiting_approval:
        return Reply(_settled_text(rollout, policy))
    if user not in policy.approvers:
        _refuse(ctx, user, action, rollout, "not_an_approver")
        raise NotAllowed(
            say(
                "You are not an approver of `{}`, so you cannot {} {}.",
                rollout.pipeline,
                action,
                rollout.id,
            ),
            hint=say("Approvers: {}.", Users.of(policy.approvers)),
        )
    if decision == APPROVED and user == rollout.requested_by:
        _refuse(ctx, user, action, rollout, "own_rollout")
        others = [u for u in policy.approvers if u != user]
        raise NotAllowed(
            "You asked for this deploy, so you cannot approve it yourself.",
            hint=say("Ask {}.", Users.of(others)) if others else None,
        )
    return _record(ctx, rollout.id, user, decision, policy)


def _record(ctx: Context, rollout_id: str, user: str, decision: str, policy: Approvals) -> Reply:
    now = ctx.clock.now()
    recorded = _Recorded()

    def record(rollout: Rollout) -> None:
        # Runs inside WATCH/MULTI, possibly more than once: decide from what Redis holds now.
        if rollout.status is not RolloutStatus.awaiting_approval:
            recorded.outcome = "settled"
        elif now >= expires_at(rollout, policy):
            recorded.outcome = "expired"
        elif decision == REJECTED:
            rollout.approvals.append(Approval(user=user, decision=REJECTED, at=now))
            rollout.status = RolloutStatus.rejected
            rollout.error = "rejected"
            rollout.ended_by = user
            rollout.finished_at = now
            recorded.outcome = "rejected"
        elif any(a.user == user and a.decision == APPROVED for a in rollout.approvals):
            recorded.outcome = "already"
        else:
            rollout.approvals.append(Approval(user=user, decision=APPROVED, at=now))
            complete = len(approvals_given(rollout, policy)) >= policy.required
            rollout.status = RolloutStatus.queued if complete else rollout.status
            recorded.outcome = "approved" if complete else "partial"

    # A rejection frees the pipeline in the same write; an approval keeps it for the rollout.
    rollout = ctx.store.settle_rollout(rollout_id, record)
    outcome = recorded.outcome
    action = "approve" if decision == APPROVED else "reject"
    count = f"{len(approvals_given(rollout, policy))} of {policy.required}"
    if outcome == "settled":
        return Reply(_settled_text(rollout, policy))
    if outcome == "expired":
        expire_rollout(ctx.store, ctx.notifier, ctx.clock, policy, rollout_id)
        return Reply(_settled_text(ctx.store.rollout(rollout_id) or rollout, policy))
    if outcome == "already":
        return Reply(say("You already approved {} ({}).", rollout.id, count))
    ctx.audit(
        actor=user,
        action=action,
        pipeline=rollout.pipeline,
        outcome=outcome if outcome != "partial" else "recorded",
        rollout=rollout.id,
        detail=f"{rollout.reference}; {count} approval(s)",
        command=f"{action} button",
    )
    if outcome == "rejected":
        record_outcome(ctx.store, rollout, "rejected", audit=False)  # the approver's entry above
        _after_close(ctx.store, ctx.notifier, policy, rollout)
        return Reply(
            say("Rejected: `{}` will not be deployed to `{}`.", rollout.reference, rollout.pipeline)
        )
    if outcome == "partial":
        _show_quietly(ctx.store, ctx.notifier, policy, rollout.id)
        return Reply(
            say(
                "Your approval of {} is recorded ({}); it deploys once enough approvers agree.",
                rollout.id,
                count,
            )
        )
    # The one change that completed the approvals: the rollout runs now, exactly once. Its lock
    # goes back to the normal TTL, so a replica dying from here on is recovered quickly.
    ctx.store.renew_rollout_lock(rollout.pipeline, rollout.id, ctx.limits.lock_ttl_seconds)
    ctx.runner.submit(rollout.id)
    _show_quietly(ctx.store, ctx.notifier, policy, rollout.id)
    return Reply(
        say(
            "Approved ({}): deploying `{}` to `{}` now; progress in {}.",
            count,
            rollout.reference,
            rollout.pipeline,
            Channel(rollout.channel),
        )
    )
