"""Carrying on after a crash: adopt orphaned rollouts and believe the engine about what runs."""

from __future__ import annotations

import logging

from bot.domain.models import RolloutStatus
from bot.services import approvals, traffic
from bot.services.context import Context
from bot.services.watch import record_watch

logger = logging.getLogger(__name__)


def recover_orphans(ctx: Context) -> list[str]:
    """Adopt every in-flight rollout whose lock expired (its bot died); returns their ids."""
    adopted = []
    for name, orphan, lock_held in ctx.store.rollouts_in_flight(list(ctx.config.pipelines)):
        # An approval request is not run: it expires when due (by the clock) or orphaned.
        if approvals.expire_if_due(ctx, orphan, orphaned=not lock_held) or lock_held:
            continue
        if ctx.store.adopt_rollout(name, orphan, ctx.limits.lock_ttl_seconds):
            logger.warning("adopting rollout %s of %s: its bot stopped mid-way", orphan, name)
            ctx.audit(
                actor="immune",
                action="recover",
                pipeline=name,
                rollout=orphan,
                outcome="adopted",
                detail=f"by {ctx.instance_id}",
            )
            ctx.runner.submit_recovery(orphan)
            adopted.append(orphan)
    return adopted


def watch_the_unwatched(ctx: Context) -> list[str]:
    """Record the watch of every live rollout that has none; returns their ids.

    The runner marks a rollout live, then records its watch: a bot killed between the two
    (a few ms) left a live rollout nobody judges, and behind a proxy a canary split nobody
    finishes or rolls back. Only a rollout live for longer than a lock's lifetime is taken,
    so a runner still on its way to record the watch is never raced (as for orphans).
    """
    started = []
    now = ctx.clock.now()
    watched = ctx.store.watches()
    snapshots = ctx.store.pipeline_snapshots(list(ctx.config.pipelines))
    for name, snapshot in snapshots.items():
        pipeline = ctx.config.pipelines[name]
        # The state says which rollout is live: only one with no watch has its record parsed.
        live_id = snapshot.state.live_rollout
        if not pipeline.kpis or not live_id or live_id in watched:
            continue
        live = snapshot.live
        if live is None or live.status is not RolloutStatus.live:
            continue
        if now - (live.live_at or live.created_at) < ctx.limits.lock_ttl_seconds:
            continue
        logger.warning(
            "rollout %s of %s is live with no watch (its bot stopped): watching it", live.id, name
        )
        record_watch(ctx, live, pipeline, outcome="recovered")
        started.append(live.id)
    return started


def recovery_pass(ctx: Context) -> None:
    """What carrying on after a dead bot needs, every couple of seconds and at start: its
    rollouts adopted, its live rollouts watched."""
    recover_orphans(ctx)
    watch_the_unwatched(ctx)


def reconcile_live_versions(ctx: Context) -> None:
    """At start-up, make Redis agree with what the engine really runs (labels are the truth)."""
    for name, pipeline in ctx.config.pipelines.items():
        state = ctx.store.pipeline(name)
        if state.inflight_rollout:
            continue  # recover_orphans settles it
        target = ctx.target(pipeline)
        if isinstance(target, traffic.BehindProxy) and target.runs(
            name, pipeline, state.live_rollout
        ):
            # Behind a proxy several versions run at once (a canary and its baseline): the
            # live rollout's version running is all the engine must confirm.
            continue
        live = target.live(name, pipeline)
        engine_version = live.version if live else ""
        if engine_version == state.live_version:
            continue
        logger.warning(
            "pipeline %s: Redis says %r is live, the engine runs %r; believing the engine",
            name,
            state.live_version,
            engine_version,
        )
        ctx.store.update_pipeline(
            name, live_version=engine_version, live_rollout=live.rollout_id if live else ""
        )
        ctx.audit(
            actor="immune",
            action="reconcile",
            pipeline=name,
            outcome="corrected",
            detail=f"live version {state.live_version or '(none)'} -> {engine_version or '(none)'}",
        )


def restore_proxy_routes(ctx: Context) -> None:
    """Every couple of seconds: a proxy that restarted gets its recorded routes back."""
    try:
        traffic.restore_routes(ctx)
    except Exception:
        logger.exception("could not check the proxy's routes")
