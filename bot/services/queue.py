"""The deploy queue: a deploy refused only because its pipeline was busy or outside its window
waits its turn, and starts by itself when the pipeline is free and the window open.

Every replica runs `start_due` as a scheduler job. An entry leaves the queue by one atomic
take in Redis, so of several replicas exactly one starts it; what starts it is `/deploy`
itself, on behalf of the person who queued it, so every rule is checked again at that moment
(deployers, channel, halts, windows, approvals, the image). A halted pipeline's queue is
frozen until `/resume`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.domain import windows
from bot.domain.config import Pipeline
from bot.domain.errors import ImmuneError
from bot.domain.images import resolve_version
from bot.domain.models import new_id
from bot.domain.queue import QueuedDeploy, WaitsFor
from bot.domain.text import Moment, Text, User, as_text, join, say
from bot.services import deploys
from bot.services.context import Context
from bot.services.policy import check_may_run
from bot.services.requests import CommandRequest, Reply, answer_once
from bot.store.keys import Once

logger = logging.getLogger(__name__)

# How long a replica that took a queued deploy has to settle it (start it, refuse it, or put
# it back) before another replica assumes it died and settles it instead. Starting is a few
# Redis round trips, an image look-up and perhaps an approval request posted to Slack.
START_LEASE_SECONDS = 60.0
# Everything is stale to this "now": a deleted pipeline's starting entries are all settled.
_END_OF_TIME = 1e15


@dataclass(frozen=True)
class Queued:
    """The answer to "Queue it": what the person is told, and the place they hold."""

    reply: Reply
    pipeline: str
    holds_place: bool


def _request(user: str, channel: str, pipeline: str, version: str) -> CommandRequest:
    return CommandRequest(
        command="/deploy", text=f"{pipeline} {version}", user_id=user, channel_id=channel
    )


def _ordinal(place: int) -> str:
    suffix = "th" if 10 <= place % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(place % 10, "th")
    return f"{place}{suffix}"


def _waits_for(ctx: Context, name: str, pipeline: Pipeline) -> tuple[WaitsFor, Text]:
    state = ctx.store.pipeline(name)
    if state.halted:
        return WaitsFor.in_flight, as_text(
            "the pipeline is resumed (it is halted: the queue waits)"
        )
    if state.inflight_rollout:
        return WaitsFor.in_flight, as_text("the rollout in flight ends")
    if pipeline.windows:
        verdict = windows.check(pipeline.windows, ctx.config.zone, ctx.clock.now())
        if not verdict.open and verdict.next_open is not None:
            return WaitsFor.window, say("its window opens ({})", Moment(verdict.next_open))
    return WaitsFor.in_flight, as_text("the pipeline is free")


def join_queue(
    ctx: Context, *, user: str, channel: str, pipeline: str, version: str, request_id: str
) -> Queued:
    """Take a place in `pipeline`'s queue for `version` (one place per person and pipeline)."""
    held: list[bool] = [False]

    def handle() -> Reply:
        request = _request(user, channel, pipeline, version)
        config = check_may_run(ctx, pipeline, request)
        image = resolve_version(config.image, version)
        waits_for, until = _waits_for(ctx, pipeline, config)
        entry = QueuedDeploy(
            id=new_id("q"),
            pipeline=pipeline,
            version=image.version if image.tag else version,
            requested_by=user,
            channel=channel,
            queued_at=ctx.clock.now(),
            waits_for=waits_for,
        )
        earlier = ctx.store.enqueue(entry)
        held[0] = True
        if earlier is not None:
            return Reply(
                say(
                    "You already hold a place in the queue of `{}` (with `{}`, queued {}): one "
                    "place per person and pipeline. Leave it first to queue another version.",
                    pipeline,
                    earlier.version,
                    Moment(earlier.queued_at),
                )
            )
        ctx.audit(
            actor=user,
            action="queue",
            pipeline=pipeline,
            outcome="queued",
            detail=f"{entry.version}; waits for {waits_for.value}",
        )
        place = 1 + [e.id for e in ctx.store.queue(pipeline)].index(entry.id)
        return Reply(
            say(
                "Queued `{}` for `{}`: you are {} in its queue. It starts by itself when ",
                entry.version,
                pipeline,
                _ordinal(place),
            )
            + until
            + ", with every rule checked again then; you will be told here."
        )

    reply = answer_once(ctx, Once.action, request_id, "that button press", handle)
    return Queued(reply, pipeline, held[0])


def leave_queue(ctx: Context, *, user: str, pipeline: str, request_id: str) -> Reply:
    def handle() -> Reply:
        taken = ctx.store.take_queued(pipeline, user=user)
        if taken is None:
            return Reply(say("You hold no place in the queue of `{}`.", pipeline))
        ctx.audit(
            actor=user, action="unqueue", pipeline=pipeline, outcome="left", detail=taken.version
        )
        return Reply(
            say("You left the queue of `{}`: `{}` will not start.", pipeline, taken.version)
        )

    return answer_once(ctx, Once.action, request_id, "that button press", handle)


def waiting(ctx: Context, pipeline: str) -> list[QueuedDeploy]:
    return ctx.store.queue(pipeline)


def what_will_start(ctx: Context, pipeline: str) -> Text | None:
    """For `/resume`: the queue it un-freezes, in the order it starts."""
    entries = ctx.store.queue(pipeline)
    if not entries:
        return None
    return say("Its queue starts again, in this order: ") + join(
        [say("`{}` by {}", e.version, User(e.requested_by)) for e in entries], ", "
    )


def _ready(ctx: Context, name: str, pipeline: Pipeline) -> bool:
    state = ctx.store.pipeline(name)
    if state.halted or state.inflight_rollout:
        return False  # a halt freezes the queue; a rollout in flight is waited for
    if ctx.engines.down_since(pipeline.target) is not None:
        return False  # the engine is waited for too: a queued deploy keeps its place
    if pipeline.windows:
        return windows.check(pipeline.windows, ctx.config.zone, ctx.clock.now()).open
    return True


def start_due(ctx: Context) -> int:
    """The scheduler job: start the first queued deploy of each pipeline that is ready.

    Returns how many started (or asked for approval).
    """
    started = 0
    for name in ctx.store.queued_pipelines():
        pipeline = ctx.config.pipelines.get(name)
        try:
            if pipeline is None:
                _drop_unknown(ctx, name)
                continue
            now = ctx.clock.now()
            for stale in ctx.store.reclaim_starting(name, now, now + START_LEASE_SECONDS):
                _settle_stale(ctx, stale)
            if not _ready(ctx, name, pipeline):
                continue
            entry = ctx.store.take_queued(name, lease_until=now + START_LEASE_SECONDS)
            if entry is not None and _start(ctx, entry):
                started += 1
        except Exception:
            logger.exception("could not start the queue of %s", name)
    return started


def _settle_stale(ctx: Context, entry: QueuedDeploy) -> None:
    """An entry whose taker died before settling it: started already (a rollout of that
    version by that person since it was queued), or back to its place."""
    started = any(
        r.requested_by == entry.requested_by
        and r.version == entry.version
        and r.created_at >= entry.queued_at
        for r in ctx.store.recent_rollouts(entry.pipeline, 20)
    )
    if not started:
        ctx.store.requeue(entry)
    logger.warning(
        "queued deploy %s of %s %s was left half-started by a replica: %s",
        entry.id,
        entry.pipeline,
        entry.version,
        "it had started" if started else "back in its place",
    )
    ctx.store.finish_starting(entry)


def _start(ctx: Context, entry: QueuedDeploy) -> bool:
    """Start a taken entry and settle it, whatever happens."""
    try:
        return _start_taken(ctx, entry)
    finally:
        ctx.store.finish_starting(entry)


def _start_taken(ctx: Context, entry: QueuedDeploy) -> bool:
    request = _request(entry.requested_by, entry.channel, entry.pipeline, entry.version)
    try:
        reply = deploys.deploy(ctx, request)
    except ImmuneError as refusal:
        if refusal.queue_offer is not None:
            # Busy or shut again since the check (another replica, a person): keep the place.
            ctx.store.requeue(entry)
            return False
        ctx.audit(
            actor=entry.requested_by,
            action="queue",
            pipeline=entry.pipeline,
            outcome="dropped",
            detail=f"{entry.version}: {refusal.code}",
        )
        _tell(
            ctx,
            entry,
            say("Your queued deploy of `{}` to `{}` did not start: ", entry.version, entry.pipeline)
            + refusal.text(),
        )
        return False
    except Exception:
        ctx.store.requeue(entry)
        raise
    ctx.audit(
        actor=entry.requested_by,
        action="queue",
        pipeline=entry.pipeline,
        outcome="started",
        detail=entry.version,
    )
    _tell(ctx, entry, say("Your queued deploy started. ") + reply.text)
    return True


def _drop_unknown(ctx: Context, name: str) -> None:
    """A pipeline deleted from the config since: its queue can never start; say so."""
    for starting in ctx.store.reclaim_starting(name, _END_OF_TIME, _END_OF_TIME):
        ctx.store.finish_starting(starting)
        ctx.store.requeue(starting)  # told below, with the rest
    while (entry := ctx.store.take_queued(name)) is not None:
        ctx.audit(
            actor=entry.requested_by,
            action="queue",
            pipeline=name,
            outcome="dropped",
            detail=f"{entry.version}: unknown_pipeline",
        )
        _tell(
            ctx,
            entry,
            say(
                "Your queued deploy of `{}` to `{}` did not start: the pipeline is no longer "
                "in the pipelines file.",
                entry.version,
                name,
            ),
        )


def _tell(ctx: Context, entry: QueuedDeploy, text: Text) -> None:
    try:
        ctx.notifier.tell_person(entry.channel, entry.requested_by, text)
    except Exception:
        logger.exception("could not tell %s about their queued deploy", entry.requested_by)
