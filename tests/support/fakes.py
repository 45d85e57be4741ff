"""A deploy target and a KPI source that live in memory: plugins written by the test suite.

They implement the ports (bot/ports.py) the way an outside plugin would, so the services can
be driven without Docker or Prometheus, and the registry can be shown to take new plugins.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.domain.config import ConfigProblem, Pipeline, problems_of
from bot.domain.errors import ImageNotFound
from bot.domain.images import ImageRef
from bot.domain.kpis import Reading
from bot.ports import (
    LiveVersion,
    LocatedImage,
    Progress,
    RolloutFailed,
    RolloutRequest,
    SwapResult,
    TestResult,
)

MEMORY = "memory"  # the fake target's name and its section's key
CHANNEL = "C0DEPLOY"


def memory_config(**web: Any) -> dict[str, Any]:
    """A pipelines file with one pipeline `web` on the memory target."""
    pipeline: dict[str, Any] = {
        "channel": CHANNEL,
        "target": MEMORY,
        "image": "example/web",
        "container": {"name": f"web-{secrets.token_hex(3)}"},
        "health": {"url": "http://127.0.0.1:9/healthz"},
        **web,
    }
    return {"admins": ["U0ADMIN"], "pipelines": {"web": pipeline}}


class MemoryOptions(BaseModel):
    """The `memory:` section of a pipeline with `target: memory` (the plugin's own model)."""

    model_config = ConfigDict(extra="forbid")
    slots: int = Field(default=1, ge=1, le=8)


def check_memory_pipeline(pipeline: Pipeline) -> list[ConfigProblem]:
    try:
        MemoryOptions.model_validate(pipeline.section(MEMORY))
    except ValidationError as exc:
        return problems_of(exc, prefix=MEMORY)
    return []


@dataclass
class MemoryTarget:
    """Runs "versions" in a dict. `missing` images are not found; `failing` ones fail the swap."""

    images: set[str] = field(default_factory=set)
    failing: set[str] = field(default_factory=set)
    running: dict[str, LiveVersion] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (what, version)
    healthy: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    def health(self) -> dict[str, object]:
        return {"ok": self.healthy}

    def locate(self, pipeline_name: str, pipeline: Pipeline, image: ImageRef) -> LocatedImage:
        with self.lock:
            self.calls.append(("locate", image.version))
        if image.version not in self.images:
            raise ImageNotFound(f"Image `{image.reference}` is not in memory.")
        return LocatedImage(image.reference, f"mem:{image.version}", runs_as_root=False)

    def run_tests(self, pipeline: Pipeline, located: LocatedImage, rollout_id: str) -> TestResult:
        return TestResult(passed=True, exit_code=0, output_tail="", seconds=0.0)

    def roll_out(self, request: RolloutRequest, progress: Progress) -> SwapResult:
        version = request.image.version
        with self.lock:
            self.calls.append(("roll_out", version))
        progress.check_cancelled()
        with progress.step("swap", detail=version):
            if version in self.failing:
                raise RolloutFailed(f"{version} did not become healthy", restored=True)
            self.running[request.pipeline_name] = LiveVersion(version, request.rollout_id, True)
        return SwapResult(gap_seconds=0.0)

    def live(self, pipeline_name: str, pipeline: Pipeline) -> LiveVersion | None:
        return self.running.get(pipeline_name)

    def recover(self, request: RolloutRequest, progress: Progress) -> bool:
        live = self.running.get(request.pipeline_name)
        return live is not None and live.version == request.image.version


@dataclass
class ScriptedSource:
    """A KPI source answering each query with the next of its scripted values (then the last)."""

    values: dict[str, list[float | None]] = field(default_factory=dict)
    queries: list[str] = field(default_factory=list)

    def health(self) -> dict[str, object]:
        return {"ok": True, "scripted": len(self.values)}

    def read(self, query: str, timeout: float) -> Reading:
        self.queries.append(query)
        script = self.values.get(query) or [None]
        value = script.pop(0) if len(script) > 1 else script[0]
        return Reading(value, "" if value is not None else "no data")

    def read_range(
        self, query: str, start: float, end: float, step: float, timeout: float
    ) -> list[tuple[float, float]]:
        return []
