"""A deploy target and a KPI source that live in memory: plugins written by the test suite.

They implement the ports (bot/ports.py) the way an outside plugin would, so the services can
be driven without Docker or Prometheus, and the registry can be shown to take new plugins.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.domain.config import ConfigProblem, Pipeline, Traffic, problems_of
from bot.domain.errors import ImageNotFound, UnknownTag
from bot.domain.images import ImageRef
from bot.domain.kpis import Reading
from bot.ports import (
    LiveVersion,
    LocatedImage,
    LookupTimedOut,
    Progress,
    RolloutFailed,
    RolloutRequest,
    RunningVersion,
    SwapResult,
    TestResult,
    TrafficError,
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
    digests: dict[str, str] = field(default_factory=dict)  # tag -> manifest digest
    slow: set[str] = field(default_factory=set)  # tags whose quick lookup times out
    labels: dict[str, dict[str, str]] = field(default_factory=dict)  # version -> image labels
    lock: threading.Lock = field(default_factory=threading.Lock)
    # What the engine was asked, in order (shared with a MemoryRouter to see the order of both).
    events: list[str] = field(default_factory=list)

    def health(self) -> dict[str, object]:
        return {"ok": self.healthy}

    def locate(
        self,
        pipeline_name: str,
        pipeline: Pipeline,
        image: ImageRef,
        progress: Progress | None = None,
    ) -> LocatedImage:
        with self.lock:
            self.calls.append(("locate", image.version))
            self.events.append("locate")
        if image.version not in self.images:
            raise ImageNotFound(f"Image `{image.reference}` is not in memory.")
        return LocatedImage(
            image.reference,
            f"mem:{image.version}",
            runs_as_root=False,
            labels=self.labels.get(image.version, {}),
        )

    def deployable_versions(self, pipeline_name: str, pipeline: Pipeline) -> list[str]:
        with self.lock:
            return sorted(self.images, reverse=True)

    def resolve(self, pipeline: Pipeline, image: ImageRef, *, quick: bool) -> str:
        """A registry in memory: `digests` maps a tag to what it points at."""
        with self.lock:
            self.calls.append(("resolve", image.version))
        if quick and image.tag in self.slow:
            raise LookupTimedOut("the memory registry is slow for this tag")
        if image.tag is None or image.tag not in self.digests:
            raise UnknownTag(f"`{image.tagged}` is not in the memory registry.")
        return self.digests[image.tag]

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

    def reconcile(self, pipeline_name: str, pipeline: Pipeline, live_version: str) -> list[str]:
        with self.lock:
            self.calls.append(("reconcile", live_version))
        return []


@dataclass
class ScriptedSource:
    """A KPI source answering each query with the next of its scripted values (then the last)."""

    values: dict[str, list[float | None]] = field(default_factory=dict)
    queries: list[str] = field(default_factory=list)
    timeouts: list[tuple[str, float]] = field(default_factory=list)  # (query, wait allowed)
    delays: dict[str, float] = field(default_factory=dict)  # seconds a query takes to answer

    def health(self) -> dict[str, object]:
        return {"ok": True, "scripted": len(self.values)}

    def read(self, query: str, timeout: float) -> Reading:
        self.queries.append(query)
        self.timeouts.append((query, timeout))
        time.sleep(self.delays.get(query, 0.0))
        script = self.values.get(query) or [None]
        value = script.pop(0) if len(script) > 1 else script[0]
        return Reading(value, "" if value is not None else "no data")

    def read_range(
        self, query: str, start: float, end: float, step: float, timeout: float
    ) -> list[tuple[float, float]]:
        return []


@dataclass
class SideBySideMemoryTarget(MemoryTarget):
    """Runs versions side by side, each on a port of `traffic.ports` (bot.ports.SideBySideTarget).

    `unhealthy` versions start but fail their health check; `stopped` lists (port, kept).
    """

    unhealthy: set[str] = field(default_factory=set)
    by_port: dict[int, RunningVersion] = field(default_factory=dict)
    stopped: list[tuple[int, bool]] = field(default_factory=list)
    started: int = 0

    def versions(self, pipeline_name: str, pipeline: Pipeline) -> list[RunningVersion]:
        with self.lock:
            self.events.append("versions")
            return sorted(self.by_port.values(), key=lambda v: v.started_at)

    def start_beside(self, request: RolloutRequest, progress: Progress) -> RunningVersion:
        traffic = request.pipeline.traffic
        assert traffic is not None
        version = request.image.version
        with self.lock:
            free = [p for p in traffic.ports.numbers() if p not in self.by_port]
        if not free:
            raise RolloutFailed(f"no free port in traffic.ports {traffic.ports}")
        with progress.step("start", detail=f"{version} on port {free[0]}"), self.lock:
            self.started += 1
            running = RunningVersion(
                version,
                request.rollout_id,
                free[0],
                request.located.image_id,
                started_at=f"{self.started:06d}",
                reference=request.image.reference,
            )
            self.by_port[free[0]] = running
            self.calls.append(("start", version))
            self.events.append("start")
        with progress.step("health check", detail=version):
            if version in self.unhealthy or version in self.failing:
                self.stop_version(request.pipeline_name, request.pipeline, free[0], keep=False)
                raise RolloutFailed(f"{version} did not become healthy", restored=True)
        return running

    def stop_version(
        self, pipeline_name: str, pipeline: Pipeline, port: int, *, keep: bool = True
    ) -> None:
        with self.lock:
            self.by_port.pop(port, None)
            self.stopped.append((port, keep))

    def check_health(self, pipeline_name: str, pipeline: Pipeline, port: int) -> None:
        with self.lock:
            running = self.by_port.get(port)
        if running is None or running.version in self.unhealthy:
            raise RolloutFailed(f"nothing healthy on port {port}")

    def listens(self, port: int) -> bool:
        with self.lock:
            return port in self.by_port


@dataclass
class MemoryRouter:
    """A proxy's runtime state in a dict, per backend; `down` refuses every command, `refuse`
    refuses route() only; restart() forgets everything, as HAProxy does."""

    weights: dict[str, dict[int, int]] = field(default_factory=dict)
    drained: list[int] = field(default_factory=list)
    routed: list[dict[int, int]] = field(default_factory=list)
    down: bool = False
    refuse: bool = False
    events: list[str] = field(default_factory=list)  # each call by name, in order

    def health(self) -> dict[str, object]:
        return {"ok": not self.down}

    def _check(self, call: str) -> None:
        self.events.append(call)
        if self.down:
            raise TrafficError("connection refused")

    def route(self, traffic: Traffic, weights: Mapping[int, int]) -> None:
        self._check("route")
        if self.refuse:
            raise TrafficError("No such server.")
        self.weights[traffic.backend] = dict(weights)
        self.routed.append(dict(weights))

    def shift(self, traffic: Traffic, weights: Mapping[int, int]) -> bool:
        self._check("shift")
        serving = self.weights.get(traffic.backend, {})
        for port, weight in weights.items():
            if port in serving:
                serving[port] = weight
        if set(serving) != set(weights):
            return False
        self.routed.append(dict(weights))
        return True

    def drain(self, traffic: Traffic, port: int) -> None:
        self._check("drain")
        self.drained.append(port)
        self.weights.get(traffic.backend, {}).pop(port, None)

    def routes(self, traffic: Traffic) -> dict[int, int]:
        self._check("routes")
        return dict(self.weights.get(traffic.backend, {}))

    def restart(self) -> None:
        self.weights.clear()
