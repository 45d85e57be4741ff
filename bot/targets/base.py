"""What a deploy target does, whatever runs the containers (one engine, or a Swarm)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from bot.config import Pipeline
from bot.images import ImageRef


class RolloutFailed(Exception):
    """The new version did not go live; `restored` tells whether the old one serves again."""

    def __init__(self, reason: str, *, logs_tail: str = "", restored: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.logs_tail = logs_tail
        self.restored = restored


class RolloutCancelled(Exception):
    """Stopped at a safe point (a /halt arrived before the swap began)."""


@dataclass(frozen=True)
class LocatedImage:
    reference: str
    image_id: str
    runs_as_root: bool


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


class Target(Protocol):
    def locate(self, pipeline_name: str, pipeline: Pipeline, image: ImageRef) -> LocatedImage:
        """Find (or pull, as the pipeline allows) the image; ImageNotFound if it is not there."""
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
