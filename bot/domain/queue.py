"""Deploys waiting their turn: refused only because the pipeline was busy or its window shut."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel


class WaitsFor(StrEnum):
    """Why a deploy was queued instead of started (what has to change before it starts)."""

    in_flight = "in_flight"  # another rollout of the pipeline was in flight
    window = "window"  # the pipeline was outside its deploy windows


class QueuedDeploy(BaseModel):
    """One person's place in one pipeline's queue (a person holds at most one per pipeline)."""

    id: str
    pipeline: str
    version: str
    requested_by: str
    channel: str  # where they asked: commands are checked against it, notes are shown there
    queued_at: float
    waits_for: WaitsFor
    reason: str = ""
