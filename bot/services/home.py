"""The App Home tab: what each person may see of the pipelines, and who looks at it.

The use case gathers the facts (Redis, read once for every pipeline); bot/slack/home.py lays
them out and publishes. People who opened their Home recently are kept in Redis, so a
refresh job on any replica republishes their tab when what it shows changes; a rollout
never waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.domain.config import Pipeline
from bot.domain.incidents import Incident
from bot.domain.models import PipelineState, Rollout
from bot.domain.queue import QueuedDeploy
from bot.services.context import Context

# How long after opening their Home a person's tab is kept up to date.
RECENT_VIEWER_SECONDS = 3600.0


@dataclass(frozen=True)
class HomePipeline:
    name: str
    pipeline: Pipeline
    state: PipelineState
    inflight: Rollout | None
    live: Rollout | None
    incident: Incident | None  # the open incident that halted it, if any
    queue: tuple[QueuedDeploy, ...] = ()  # deploys waiting their turn, first first


@dataclass(frozen=True)
class HomeReport:
    """What one person's Home tab shows; `pipelines` are those they may see, by name."""

    user: str
    pipelines: list[HomePipeline]
    configured: int  # pipelines in the config, seen or not (an empty tab says why)
    page: int
    admins: list[str]


def may_see(ctx: Context, user: str, pipeline: Pipeline) -> bool:
    return ctx.config.is_admin(user) or pipeline.visible_to(user)


def record_opened(ctx: Context, user: str) -> None:
    ctx.store.home_opened(user, ctx.clock.now())


def recent_viewers(ctx: Context) -> list[str]:
    return ctx.store.home_viewers(since=ctx.clock.now() - RECENT_VIEWER_SECONDS)


def gather(ctx: Context) -> list[HomePipeline]:
    """Every configured pipeline as it stands, in one Redis round trip (and one per open
    incident and per pipeline with a queue)."""
    names = sorted(ctx.config.pipelines)
    snapshots = ctx.store.pipeline_snapshots(names)
    queued = set(ctx.store.queued_pipelines())
    gathered = []
    for name in names:
        snapshot = snapshots[name]
        incident_id = snapshot.state.halted_incident if snapshot.state.halted else ""
        incident = ctx.store.incident(incident_id) if incident_id else None
        if incident is not None and incident.resumed_at is not None:
            incident = None
        gathered.append(
            HomePipeline(
                name,
                ctx.config.pipelines[name],
                snapshot.state,
                snapshot.inflight,
                snapshot.live,
                incident,
                tuple(ctx.store.queue(name)) if name in queued else (),
            )
        )
    return gathered


def report_for(ctx: Context, user: str, everything: list[HomePipeline]) -> HomeReport:
    seen = [p for p in everything if may_see(ctx, user, p.pipeline)]
    return HomeReport(
        user, seen, len(everything), ctx.store.home_page(user), list(ctx.config.admins)
    )


def choose_page(ctx: Context, user: str, page: int) -> None:
    ctx.store.set_home_page(user, max(page, 0))


def claim_publish(ctx: Context, user: str, fingerprint: str) -> bool:
    """True when `user`'s tab does not show `fingerprint` yet and this caller publishes it."""
    return ctx.store.claim_home_shown(user, fingerprint)


def publish_failed(ctx: Context, user: str) -> None:
    ctx.store.forget_home_shown(user)
