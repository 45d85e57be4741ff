"""The bench's rig: Redis, Prometheus, the Docker engine, demo images and the Slack emulator.

Servers and images come from the tests' helpers (`tests/support/services.py`); what the bench
adds is its own names. Every container, pipeline and image of a run is named
`immune-bench-<run id>…`, and the run holds a lock file (the tests' `PytestRun`, in a runs
directory of the bench's own) while it lives, so the next run removes what a killed one left
behind without touching a run still going. Test sessions never touch bench objects: their
clean-up looks only at `immune-t-…` and `immune-test-…` names.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import docker.errors
import requests
from docker import DockerClient

from bot.targets.docker_host import LABEL_PIPELINE
from tests.support.bot_harness import CHANNEL, free_port
from tests.support.services import (
    DEMO_TAGS,
    DemoImages,
    PrometheusServer,
    PytestRun,
    RedisServer,
    build_demo_images,
    connect_docker,
    live_runs,
    remove_images,
)
from tests.support.slack_emulator import SlackEmulator

logger = logging.getLogger(__name__)

RUNS_DIR = Path(tempfile.gettempdir()) / "immune-bench-runs"
NAME_PREFIX = "immune-bench-"
RUN_LABEL = "immune.bench-run"
BENCH_TAGS = ("1", "2", "3")
"""Demo tags the bench needs: 1 and 2 serve well, 3 answers half its requests with 5xx."""


def _run_of(name: str) -> str | None:
    """The run id in `immune-bench-<id>…` (containers, pipelines, image repositories)."""
    if not name.startswith(NAME_PREFIX):
        return None
    return name[len(NAME_PREFIX) :].split("-", 1)[0].split("/", 1)[0] or None


def remove_bench_objects(client: DockerClient, keep_runs: set[str]) -> list[str]:
    """Remove bench containers and images of runs not in `keep_runs`; returns what went."""
    removed = []
    for info in client.api.containers(all=True):
        name = info["Names"][0].lstrip("/") if info.get("Names") else ""
        labels = info.get("Labels") or {}
        owner = labels.get(RUN_LABEL) or _run_of(labels.get(LABEL_PIPELINE, "")) or _run_of(name)
        if owner is not None and owner not in keep_runs:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                client.api.remove_container(info["Id"], force=True, v=True)
                removed.append(f"container {name}")
    for image in client.api.images():
        for tag in image.get("RepoTags") or []:
            owner = _run_of(tag)
            if owner is not None and owner not in keep_runs:
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    client.api.remove_image(tag, force=True)
                    removed.append(f"image {tag}")
    return removed


class BenchRig:
    """Everything a bench run talks to, started once and torn down once."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="immune-bench-"))
        self.run: PytestRun | None = None
        self.docker: DockerClient | None = None
        self.redis: RedisServer | None = None
        self.prometheus: PrometheusServer | None = None
        self.images: DemoImages | None = None
        self.emulator: SlackEmulator | None = None
        self.timings: dict[str, float] = {}

    @property
    def id(self) -> str:
        assert self.run is not None
        return self.run.id

    def name(self, what: str) -> str:
        """A name of this run's own: `immune-bench-<id>-<what>` (containers, pipelines)."""
        return f"{NAME_PREFIX}{self.id}-{what}"

    def start(self) -> BenchRig:
        started = time.monotonic()
        self.run = PytestRun(RUNS_DIR)
        self.docker = connect_docker()
        leftovers = remove_bench_objects(self.docker, set(live_runs(RUNS_DIR)))
        if leftovers:
            logger.warning("removed leftovers of earlier bench runs: %s", ", ".join(leftovers))
        self.redis = RedisServer(self.workdir / "redis")
        self.redis.start()
        self.prometheus = PrometheusServer(self.workdir / "prometheus")
        self.prometheus.start()
        tags: Mapping[str, tuple[str, str]] = {tag: DEMO_TAGS[tag] for tag in BENCH_TAGS}
        repo = f"{NAME_PREFIX}{self.id}/web"
        try:
            self.images = build_demo_images(repo, tags, labels={RUN_LABEL: self.id})
        except Exception:
            remove_images(self.docker, DemoImages(repo, tags))
            raise
        self.emulator = SlackEmulator().start()
        self.emulator.add_channel(CHANNEL, "deploys")
        self.timings["rig_start_seconds"] = time.monotonic() - started
        return self

    def close(self) -> None:
        """Stop and remove everything this run started, whatever state it is in."""
        if self.emulator is not None:
            with contextlib.suppress(Exception):
                self.emulator.stop()
        if self.docker is not None and self.run is not None:
            others = set(live_runs(RUNS_DIR)) - {self.id}
            try:
                removed = remove_bench_objects(self.docker, others)
                logger.info("clean-up removed: %s", ", ".join(removed) or "nothing")
            except Exception:
                logger.exception("clean-up of containers and images failed")
        for server in (self.prometheus, self.redis):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()
        if self.docker is not None:
            self.docker.close()
        if self.run is not None:
            self.run.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # Helpers shared by sections ----------------------------------------------------------

    def scrape(self, labels: Mapping[str, str], port: int, name: str) -> None:
        """Have Prometheus scrape 127.0.0.1:port every second with these labels."""
        assert self.prometheus is not None
        self.prometheus.set_targets(labels, [f"127.0.0.1:{port}"], name=name)

    def free_port(self) -> int:
        return free_port()

    def prometheus_value(self, query: str, at: float | None = None) -> float | None:
        """An instant query's single value (None when empty)."""
        assert self.prometheus is not None
        params: dict[str, str] = {"query": query}
        if at is not None:
            params["time"] = f"{at:.3f}"
        answer = requests.get(f"{self.prometheus.url}/api/v1/query", params=params, timeout=10)
        result = answer.json()["data"]["result"]
        if not result:
            return None
        return float(result[0]["value"][1])

    def prometheus_range(
        self, query: str, start: float, end: float, step: float
    ) -> list[tuple[float, float]]:
        """A range query of a single-series expression: (time, value) pairs."""
        assert self.prometheus is not None
        answer = requests.get(
            f"{self.prometheus.url}/api/v1/query_range",
            params={
                "query": query,
                "start": f"{start:.3f}",
                "end": f"{end:.3f}",
                "step": f"{step:g}",
            },
            timeout=30,
        )
        body = answer.json()
        if body.get("status") != "success":
            raise RuntimeError(f"range query failed: {body}")
        result = body["data"]["result"]
        if not result:
            return []
        return [(float(t), float(v)) for t, v in result[0]["values"]]
