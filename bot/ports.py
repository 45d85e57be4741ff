"""The ports: what the services need from the world, in the domain's terms.

Adapters implement them: `bot/targets/` (Target), `bot/kpi_sources/` (KpiSource) and
`bot/slack/` (Notifier). Nothing here knows Docker, Prometheus, Redis or Slack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Literal, Protocol

from bot.domain.config import Approvals, Pipeline, Traffic
from bot.domain.images import ImageRef
from bot.domain.incidents import AnalysisChange, Incident
from bot.domain.kpis import Reading
from bot.domain.models import Rollout, TrafficSplit
from bot.domain.text import Text

# Deploy targets ---------------------------------------------------------------------------


class RolloutFailed(Exception):
    """The new version did not go live; `restored` tells whether the old one serves again."""

    def __init__(self, reason: str, *, logs_tail: str = "", restored: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.logs_tail = logs_tail
        self.restored = restored


class RolloutCancelled(Exception):
    """Stopped at a safe point (a /halt arrived before the swap began)."""


class LookupTimedOut(Exception):
    """The registry did not answer a quick tag lookup in time: the rollout resolves the tag
    as its first step instead (the ack must not wait)."""


@dataclass(frozen=True)
class LocatedImage:
    reference: str
    image_id: str
    runs_as_root: bool
    labels: Mapping[str, str] = field(default_factory=dict)  # the image's own (OCI) labels


@dataclass(frozen=True)
class LiveVersion:
    """What the engine really runs for a pipeline, read from labels."""

    version: str
    rollout_id: str
    healthy: bool | None = None


@dataclass(frozen=True)
class TestResult:
    passed: bool
    exit_code: int | None
    output_tail: str
    seconds: float
    timed_out: bool = False


@dataclass
class SwapResult:
    gap_seconds: float | None
    notes: list[str] = field(default_factory=list)


class Progress(Protocol):
    """How a target reports its steps; the runner records them in Redis and in Slack."""

    def step(self, name: str, detail: str = "") -> AbstractContextManager[None]: ...

    def detail(self, text: str) -> None:
        """Update the detail of the running step (e.g. `1/2 tasks updated`)."""
        ...

    def check_cancelled(self) -> None:
        """Raise RolloutCancelled if the pipeline was halted; call only at safe points."""
        ...

    def traffic(self, split: TrafficSplit) -> None:
        """Record where the rollout's requests go, before the proxy is told (behind a proxy)."""
        ...


@dataclass(frozen=True)
class RolloutRequest:
    pipeline_name: str
    pipeline: Pipeline
    image: ImageRef
    located: LocatedImage
    rollout_id: str
    from_version: str | None
    # A /rollback or automatic rollback: a target may use its engine's own rollback (Swarm).
    rollback: bool = False
    # Never pruned, container or image (`keep_versions`, `prune_images`).
    last_good_version: str | None = None


class Target(Protocol):
    def health(self) -> dict[str, object]:
        """For /healthz: `{"ok": bool, ...}` (never raises)."""
        ...

    def locate(
        self,
        pipeline_name: str,
        pipeline: Pipeline,
        image: ImageRef,
        progress: Progress | None = None,
    ) -> LocatedImage:
        """Find (or pull, as the pipeline allows) the image; ImageNotFound if it is not there.

        With `progress` (a rollout), a pull is a step of its own showing layers and bytes; one
        that stalls past the pipeline's `pull_timeout` raises RolloutFailed.
        """
        ...

    def deployable_versions(self, pipeline_name: str, pipeline: Pipeline) -> list[str]:
        """The versions (tags) of the pipeline's image that could be deployed now, newest
        first: what the engine holds (for the deploy form's version select)."""
        ...

    def resolve(self, pipeline: Pipeline, image: ImageRef, *, quick: bool) -> str:
        """The manifest digest the image's tag points at in its registry now (one manifest
        request; nothing is pulled). `quick`: inside a request's ack, LookupTimedOut when the
        registry does not answer within the short lookup time. Raises the ImageNotFound
        family (UnknownTag, UnknownRepository, RegistryUnreachable, RegistryAuthRefused,
        WrongPlatform)."""
        ...

    def run_tests(self, pipeline: Pipeline, located: LocatedImage, rollout_id: str) -> TestResult:
        """Run the pipeline's test command in a throwaway container of the new image."""
        ...

    def roll_out(self, request: RolloutRequest, progress: Progress) -> SwapResult:
        """Replace what runs with the new version; RolloutFailed after restoring the old one."""
        ...

    def live(self, pipeline_name: str, pipeline: Pipeline) -> LiveVersion | None:
        """What really runs, from the engine."""
        ...

    def recover(self, request: RolloutRequest, progress: Progress) -> bool:
        """Finish or undo a rollout a crashed bot left half done; True if the new version is live."""
        ...

    def reconcile(self, pipeline_name: str, pipeline: Pipeline, live_version: str) -> list[str]:
        """After the engine came back: make it run only `live_version` (what Redis records),
        stopping versions its restart policies brought back and starting the live one if it
        was stopped. Returns what was done, in words for the channel."""
        ...


@dataclass(frozen=True)
class RunningVersion:
    """One version running on its own port, beside others (a pipeline behind a proxy)."""

    version: str
    rollout_id: str
    port: int
    image_id: str
    started_at: str = ""  # the engine's start time (ISO), to tell the newest apart
    # What its container was started from (`repo@sha256:…` when pinned): the image it runs,
    # so a rollback to it reads no record. "" when the engine does not say.
    reference: str = ""


class SideBySideTarget(Target, Protocol):
    """A target that can run several versions of a pipeline at once, each on its own port
    from `traffic.ports`, so a proxy in front can move requests between them."""

    def versions(self, pipeline_name: str, pipeline: Pipeline) -> list[RunningVersion]:
        """The versions running now (healthy or not), from the engine."""
        ...

    def start_beside(self, request: RolloutRequest, progress: Progress) -> RunningVersion:
        """Start the version on a free port next to what runs, and wait for its health.

        Nothing running is touched. RolloutFailed (after removing what it started) when the
        ports are exhausted, the container does not start or is not healthy in time.
        """
        ...

    def stop_version(
        self, pipeline_name: str, pipeline: Pipeline, port: int, *, keep: bool = True
    ) -> None:
        """Stop the version on `port` (kept for a later start, or removed)."""
        ...

    def check_health(self, pipeline_name: str, pipeline: Pipeline, port: int) -> None:
        """Wait for the version on `port` to answer its health check; RolloutFailed if not."""
        ...

    def listens(self, port: int) -> bool:
        """Whether something listens on `port` now (no request is made: tens of microseconds),
        the check before traffic goes back to a version without asking the engine."""
        ...


# Traffic (a proxy in front of a pipeline's versions) ---------------------------------------


class TrafficError(Exception):
    """The proxy could not be reached, or refused a change; `reason` says which and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Router(Protocol):
    """Moves a pipeline's requests between its versions' ports (HAProxy's runtime API)."""

    def health(self) -> dict[str, object]:
        """For /healthz: `{"ok": bool, ...}` (never raises)."""
        ...

    def route(self, traffic: Traffic, weights: Mapping[int, int]) -> None:
        """Serve `traffic.backend` from exactly these ports, port -> weight 0-100.

        Every other slot goes to maintenance. Commands are ordered so some server always
        has weight: new or raised weights first, then lowered ones, then slots taken out.
        Raises TrafficError; a refusal before the first command changes nothing.
        """
        ...

    def shift(self, traffic: Traffic, weights: Mapping[int, int]) -> bool:
        """Re-weight slots that already serve their ports, in one round trip with no read
        first: how traffic goes back to a version that still runs. True when the backend is
        then served by exactly these ports at these weights; False (nothing changed but these
        slots' weights) when it is not, e.g. after a proxy restart: then route(). Raises
        TrafficError when the proxy cannot be reached.
        """
        ...

    def drain(self, traffic: Traffic, port: int) -> None:
        """Take no new requests on `port`'s slot; requests in flight finish."""
        ...

    def routes(self, traffic: Traffic) -> dict[int, int]:
        """What the proxy serves now: port -> weight of each slot that is ready (not drain
        or maintenance). Empty after a proxy restart: its runtime state is gone."""
        ...


# KPI sources -------------------------------------------------------------------------------


class KpiSource(Protocol):
    def health(self) -> dict[str, object]:
        """For /healthz: `{"ok": bool, ...}` (never raises)."""
        ...

    def read(self, query: str, timeout: float) -> Reading: ...

    def read_range(
        self, query: str, start: float, end: float, step: float, timeout: float
    ) -> list[tuple[float, float]]:
        """The query's values over a time range (for the breach chart); empty when unknown."""
        ...


# Telling people ----------------------------------------------------------------------------


PostedKind = Literal["rollout", "approval", "canary", "alert"]


@dataclass(frozen=True)
class Posted:
    """A message the chat service took after its sender had moved on: its ts, to record
    (a rollout's, approval's or canary question's message; an incident's alert)."""

    kind: PostedKind
    id: str
    """The rollout's id, or the incident's for an alert."""
    ts: str


class Notifier(Protocol):
    """What people are told, as domain events; the chat adapter chooses the words and markup."""

    def rollout_changed(self, rollout: Rollout) -> str | None:
        """Post the rollout's progress message, or update it in place; returns its ts, or
        None when the message went out too late to wait for (its ts comes as a `Posted`).

        Never raises for the chat service's failures and never waits long: a rollout (a
        rollback above all) must never wait for a chat service's back-off or outage.
        """
        ...

    def approval_changed(
        self, rollout: Rollout, policy: Approvals, expires_at: float
    ) -> str | None:
        """Post the rollout's approval request, or update it in place; returns its ts (None
        when it goes out later). Raises when the chat service refuses it for good (a channel
        the bot cannot post in): a request nobody sees must not stand."""
        ...

    def tell_requester(self, response_url: str | None, text: Text) -> None:
        """A private answer to whoever asked (Slack: through the request's response_url)."""
        ...

    def tell_person(self, channel: str, user: str, text: Text) -> None:
        """A private note to `user`, seen in `channel`, long after they asked (a queued
        deploy starting hours later, when the request's response_url has expired)."""
        ...

    def pipelines_halted(
        self, channel: str, pipelines: Sequence[str], by: str, reason: str
    ) -> None:
        """A person halted these pipelines (all announced in `channel`)."""
        ...

    def pipeline_resumed(self, channel: str, pipeline: str, by: str, force_reason: str) -> None:
        """A person re-opened a pipeline; `force_reason` is set when the analysis was skipped."""
        ...

    def incident_opened(self, incident: Incident) -> str | None:
        """The breach alert and its five-whys thread; returns the alert's ts."""
        ...

    def routes_restored(self, channel: str, pipeline: str, text: Text) -> None:
        """The proxy had lost a pipeline's routes (it restarted) and the bot put them back."""
        ...

    def engine_changed(self, channel: str, pipelines: Sequence[str], text: Text) -> None:
        """The engine these pipelines run on went away, or came back (`text` says which)."""
        ...

    def canary_held(
        self, rollout: Rollout, waiting: Sequence[str], decides_at: float, policy: str
    ) -> str | None:
        """A canary step could not be judged: ask whether to promote or abort (buttons), or
        (`waiting` empty) show that it was decided; returns the message's ts."""
        ...

    def incident_chart(self, incident: Incident) -> None:
        """The KPI's chart, in the alert's thread."""
        ...

    def rollback_confirmed(self, incident: Incident, by: str, rollout_id: str) -> None:
        """Someone confirmed the rollback an incident offered (auto_rollback: false)."""
        ...

    def analysis_recorded(self, incident: Incident, change: AnalysisChange) -> None:
        """Answers to the five whys arrived (or malformed ones); the alert shows the progress."""
        ...

    def incident_resumed(self, incident: Incident) -> None:
        """The incident's pipeline re-opened: the analysis summed up in its thread."""
        ...


class SilentNotifier:
    """Tells nobody: for tools and tests that look only at state."""

    def rollout_changed(self, rollout: Rollout) -> str | None:
        return rollout.message_ts

    def approval_changed(
        self, rollout: Rollout, policy: Approvals, expires_at: float
    ) -> str | None:
        return rollout.approval_ts

    def tell_requester(self, response_url: str | None, text: Text) -> None:
        return None

    def tell_person(self, channel: str, user: str, text: Text) -> None:
        return None

    def pipelines_halted(
        self, channel: str, pipelines: Sequence[str], by: str, reason: str
    ) -> None:
        return None

    def pipeline_resumed(self, channel: str, pipeline: str, by: str, force_reason: str) -> None:
        return None

    def incident_opened(self, incident: Incident) -> str | None:
        return None

    def routes_restored(self, channel: str, pipeline: str, text: Text) -> None:
        return None

    def engine_changed(self, channel: str, pipelines: Sequence[str], text: Text) -> None:
        return None

    def canary_held(
        self, rollout: Rollout, waiting: Sequence[str], decides_at: float, policy: str
    ) -> str | None:
        return rollout.canary_prompt_ts

    def incident_chart(self, incident: Incident) -> None:
        return None

    def rollback_confirmed(self, incident: Incident, by: str, rollout_id: str) -> None:
        return None

    def analysis_recorded(self, incident: Incident, change: AnalysisChange) -> None:
        return None

    def incident_resumed(self, incident: Incident) -> None:
        return None
