"""What the bot keeps in Redis: pipelines' state, rollouts, incidents, audit entries."""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from bot.domain.images import (
    LABEL_CREATED,
    LABEL_REVISION,
    LABEL_SOURCE,
    LABEL_VERSION,
    SourceRepo,
    short_revision,
    source_repo,
)
from bot.domain.text import Text, User, as_text, say


def new_id(prefix: str) -> str:
    """Short, unique, readable in Slack: `r-20261127-3f9a1c`."""
    return f"{prefix}-{time.strftime('%Y%m%d', time.gmtime())}-{secrets.token_hex(3)}"


class RolloutKind(StrEnum):
    deploy = "deploy"
    rollback = "rollback"
    auto_rollback = "auto_rollback"


class RolloutStatus(StrEnum):
    awaiting_approval = "awaiting_approval"
    queued = "queued"
    in_flight = "in_flight"
    live = "live"  # healthy and being watched
    good = "good"  # watch ended without a breach: the pipeline's last good version
    failed = "failed"  # never went live; the previous version serves
    rolled_back = "rolled_back"  # went live, then breached and was replaced
    superseded = "superseded"  # went live, replaced by a newer rollout during its watch
    rejected = "rejected"
    expired = "expired"
    cancelled = "cancelled"  # stopped by /halt before the swap

    @property
    def in_flight_states(self) -> bool:
        return self in (
            RolloutStatus.awaiting_approval,
            RolloutStatus.queued,
            RolloutStatus.in_flight,
        )

    @property
    def finished(self) -> bool:
        return not self.in_flight_states and self is not RolloutStatus.live


class StepStatus(StrEnum):
    running = "running"
    done = "done"
    failed = "failed"
    skipped = "skipped"


class Step(BaseModel):
    name: str
    status: StepStatus = StepStatus.running
    started_at: float
    ended_at: float | None = None
    detail: str = ""

    @property
    def seconds(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.started_at


class Approval(BaseModel):
    user: str
    decision: str  # approved | rejected
    at: float


class TrafficSplit(BaseModel):
    """Where a rollout's requests go behind the proxy: its version's port and the baseline's.

    Written before the proxy is told, so what Redis holds is what the proxy must serve; after
    a proxy restart the bot puts this back.
    """

    port: int
    baseline_port: int | None = None
    baseline_version: str = ""
    baseline_rollout: str = ""  # the rollout that started the baseline's container: its image
    # What the baseline's container was started from (`repo@sha256:…` when pinned): a rollback
    # to it is pinned with no record read in the ack. "" in splits recorded before it was kept.
    baseline_reference: str = ""
    percent: int = 100  # of requests to this rollout's version; the baseline takes the rest
    step: int = 0  # index into the pipeline's plan (canary steps)
    steps: int = 1  # how many steps the plan has (1: all traffic at once)
    baseline_retired: bool = False  # drained and stopped: only `port` serves
    held_since: float | None = None  # the step is over but a KPI could not be judged yet

    def weights(self) -> dict[int, int]:
        if self.baseline_port is None or self.baseline_retired:
            return {self.port: 100}
        return {self.port: self.percent, self.baseline_port: 100 - self.percent}


class Provenance(BaseModel):
    """Where an image came from: its OCI labels, as CI stamped them (empty when absent)."""

    revision: str = ""
    source: str = ""
    created: str = ""
    version: str = ""

    @classmethod
    def from_labels(cls, labels: dict[str, str]) -> Provenance | None:
        found = cls(
            revision=labels.get(LABEL_REVISION, "").strip(),
            source=labels.get(LABEL_SOURCE, "").strip(),
            created=labels.get(LABEL_CREATED, "").strip(),
            version=labels.get(LABEL_VERSION, "").strip(),
        )
        return found if any((found.revision, found.source, found.created)) else None

    @property
    def repo(self) -> SourceRepo | None:
        return source_repo(self.source)

    @property
    def short_revision(self) -> str:
        return short_revision(self.revision)

    def commit_url(self) -> str | None:
        repo = self.repo
        return repo.commit_url(self.revision) if repo and self.revision else None


@dataclass(frozen=True)
class CommitRange:
    """The commits between a good version and a bad one (both from the same source)."""

    good: str
    bad: str
    compare_url: str | None


def commit_range(good: Provenance | None, bad: Provenance | None) -> CommitRange | None:
    """Known when both versions carry a revision and the same source URL."""
    if good is None or bad is None or not good.revision or not bad.revision:
        return None
    good_repo, bad_repo = good.repo, bad.repo
    if good_repo is None or bad_repo is None or good_repo.url != bad_repo.url:
        return None
    return CommitRange(
        good.revision, bad.revision, bad_repo.compare_url(good.revision, bad.revision)
    )


class Rollout(BaseModel):
    id: str
    pipeline: str
    kind: RolloutKind
    version: str
    reference: str
    image_tag: str | None = None
    image_digest: str | None = None
    requested_by: str
    created_at: float
    status: RolloutStatus = RolloutStatus.queued
    from_version: str | None = None
    reason: str = ""
    channel: str = ""
    message_ts: str | None = None
    approval_ts: str | None = None
    response_url: str | None = None
    steps: list[Step] = Field(default_factory=list)
    approvals: list[Approval] = Field(default_factory=list)
    error: str = ""
    # Who ended it, when a person did (a rejection, a halt): kept apart from `error` so each
    # surface shows the person its own way and no chat markup is stored.
    ended_by: str = ""
    logs_tail: str = ""
    notes: list[str] = Field(default_factory=list)
    swap_gap_seconds: float | None = None
    live_at: float | None = None
    finished_at: float | None = None
    incident_id: str | None = None
    forced: bool = False
    traffic: TrafficSplit | None = None
    # judge: compare, per KPI: the latest decision explained, and its verdict (shown in the
    # rollout message; rewritten when the verdict changes, not at every poll).
    judgements: dict[str, str] = Field(default_factory=dict)
    judged: dict[str, str] = Field(default_factory=dict)
    canary_prompt_ts: str | None = None  # the message asking whether to promote or abort
    # The image's OCI labels, read when the image is located.
    provenance: Provenance | None = None

    def why(self) -> Text:
        """Why it ended, as people read it: `rejected by <someone>`."""
        if self.ended_by:
            return say("{} by {}", self.error, User(self.ended_by))
        return as_text(self.error)

    def step(self, name: str) -> Step | None:
        for step in self.steps:
            if step.name == name:
                return step
        return None


class PipelineStatus(StrEnum):
    open = "open"
    halted = "halted"


class PipelineState(BaseModel):
    """One pipeline's record in Redis (a hash); empty strings are absent values."""

    name: str
    status: PipelineStatus = PipelineStatus.open
    halted_by: str = ""
    halted_reason: str = ""
    halted_at: float | None = None
    halted_incident: str = ""
    live_version: str = ""
    live_rollout: str = ""
    last_good_version: str = ""
    last_good_rollout: str = ""
    inflight_rollout: str = ""

    @classmethod
    def from_hash(cls, name: str, data: dict[str, str]) -> PipelineState:
        values: dict[str, Any] = {k: v for k, v in data.items() if k in cls.model_fields}
        if values.get("halted_at"):
            values["halted_at"] = float(values["halted_at"])
        else:
            values.pop("halted_at", None)
        return cls(name=name, **values)

    @property
    def halted(self) -> bool:
        return self.status is PipelineStatus.halted


class AuditEntry(BaseModel):
    id: str = ""
    at: float
    actor: str
    action: str
    pipeline: str = ""
    outcome: str = ""
    detail: str = ""
    rollout: str = ""
    command: str = ""


class WatchState(BaseModel):
    """A watch: when it started, how often it polls, for how long (kept in Redis)."""

    rollout_id: str
    pipeline: str
    started_at: float
    interval: float
    duration: float
    warmup: int
    # After the engine came back from an outage, the polls up to this slot are warm-up again:
    # the restarted version's metrics need a few scrapes before a rate means anything.
    rewarm_until: int = 0

    @property
    def warmup_until(self) -> int:
        """The last slot that is warm-up (recorded, not judged)."""
        return max(self.warmup, self.rewarm_until)

    def after_outage(self, down_since: float, back_at: float) -> WatchState:
        """The watch once its engine is back: the slots the outage took (paused, never judged)
        and a fresh warm-up are added to its end, so the version is still judged for as many
        polls as its watch promised."""
        if back_at <= down_since:
            return self
        back_slot = max(0, self.slot_at(back_at))
        lost_slots = back_slot - max(0, self.slot_at(down_since)) + 1
        return self.model_copy(
            update={
                "duration": self.duration + (lost_slots + self.warmup) * self.interval,
                "rewarm_until": max(self.rewarm_until, back_slot + self.warmup),
            }
        )

    @property
    def last_slot(self) -> int:
        return max(1, math.floor(self.duration / self.interval + 1e-9))

    def slot_at(self, now: float) -> int:
        # APScheduler never fires early, so flooring (with a hair for float error) names the
        # scheduled slot even when the poll starts late.
        return math.floor((now - self.started_at) / self.interval + 1e-3)
