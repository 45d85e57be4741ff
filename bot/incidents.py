"""Incidents: a KPI breach, what the bot did about it, and the analysis people write."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import redis
from pydantic import BaseModel, Field

from bot.errors import NotFound
from bot.state import Store

if TYPE_CHECKING:
    from bot.commands import Reply
    from bot.context import Context


class KpiSample(BaseModel):
    """One poll of one KPI during a watch."""

    at: float
    slot: int
    kpi: str
    value: float | None  # None: no data (error, empty result, NaN)
    verdict: str  # ok | breach | no_data | warmup | ignored
    detail: str = ""


class Incident(BaseModel):
    id: str
    pipeline: str
    channel: str
    rollout_id: str
    bad_version: str
    restored_version: str | None = None
    rollback_rollout_id: str | None = None
    kpi: str
    query: str
    tolerance: str
    samples: list[KpiSample] = Field(default_factory=list)
    opened_at: float
    live_at: float | None = None
    actions: list[str] = Field(default_factory=list)
    alert_ts: str | None = None
    thread_ts: str | None = None
    whys: dict[int, str] = Field(default_factory=dict)
    root_cause: str = ""
    failing_test: str = ""
    resumed_by: str = ""
    resumed_at: float | None = None
    force_reason: str = ""


def create_incident(store: Store, incident: Incident) -> None:
    pipe = store.redis.pipeline()
    pipe.set(store.keys.incident(incident.id), incident.model_dump_json())
    pipe.zadd(store.keys.pipeline_incidents(incident.pipeline), {incident.id: incident.opened_at})
    pipe.execute()


def load_incident(store: Store, incident_id: str) -> Incident:
    raw = cast(str | None, store.redis.get(store.keys.incident(incident_id)))
    if raw is None:
        raise NotFound(f"There is no incident `{incident_id}`.")
    return Incident.model_validate_json(raw)


def update_incident(store: Store, incident_id: str, change: Callable[[Incident], None]) -> Incident:
    """Apply `change` atomically (WATCH/MULTI), like rollouts."""
    key = store.keys.incident(incident_id)
    with store.redis.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)  # type: ignore[no-untyped-call]
                raw = pipe.get(key)
                if raw is None:
                    raise NotFound(f"There is no incident `{incident_id}`.")
                incident = Incident.model_validate_json(cast(str, raw))
                change(incident)
                pipe.multi()
                pipe.set(key, incident.model_dump_json())
                pipe.execute()
                return incident
            except redis.WatchError:
                continue


def link_thread(store: Store, incident: Incident) -> None:
    """Remember which thread answers belong to which incident."""
    if incident.thread_ts:
        store.redis.set(
            store.keys.incident_by_thread(incident.channel, incident.thread_ts), incident.id
        )


def incident_for_thread(store: Store, channel: str, thread_ts: str) -> str | None:
    return cast(str | None, store.redis.get(store.keys.incident_by_thread(channel, thread_ts)))


def export_markdown(ctx: Context, incident_id: str) -> str:
    raise NotImplementedError("incident export arrives with issue 4")


def missing_analysis(ctx: Context, incident_id: str) -> list[str]:
    raise NotImplementedError("the five whys arrive with issue 4")


def record_resume(ctx: Context, incident_id: str, user: str, force_reason: str) -> None:
    raise NotImplementedError("the five whys arrive with issue 4")


def confirm_rollback(ctx: Context, incident_id: str, user: str, request_id: str) -> Reply:
    """Someone pressed rollback_confirm on a breach alert (auto_rollback: false)."""
    raise NotImplementedError("issue 3/4")
