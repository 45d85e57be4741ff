"""Rollback and detection: the bot against a bare `docker start` and against interval x for.

One pipeline of the demo image, scraped by a real Prometheus every second, with an error-rate
KPI. Each cycle:

1. `/rollback <p> 1` while 2 is live: from the signed command to version 1 answering.
2. `/deploy <p> 3` (half its requests 5xx): the watch breaches, the bot rolls back on its own.
   Detection: from the bad version's first breaching scrape (the first instant the KPI
   expression, evaluated by Prometheus at 50 ms steps, is beyond tolerance) to the automatic
   rollback starting (its rollout's `created_at`). Rollback: from the breach (the bad
   rollout's `finished_at`, set by `Watcher.breach`) to version 1 answering.
3. Re-open the pipeline, wait for the KPI's window to forget version 3, deploy 2 again.

"Answering" is seen from outside by a poller (every 10 ms) that reads the demo's version from
`GET /` on the service's port. The floor is the same image's stopped container started with
a bare `docker start` (docker SDK), timed to its first answer by the same poller; a second
floor stops a running container and starts the stopped one (the swap the bot must do on one
host), for reference.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import docker.errors

from bench import botctl
from bench.observe import POLL_SECONDS, Timeline, wait_for_version
from bench.rig import RUN_LABEL, BenchRig
from bench.stats import median, ratio, summarize
from bot.domain.config import Pipeline
from bot.domain.models import Rollout, RolloutKind, RolloutStatus
from bot.store.store import Store
from bot.targets.hardening import container_options
from tests.support.bot_harness import InProcessBot, docker_pipeline

logger = logging.getLogger(__name__)

KPI_MAX = 0.1
INTERVAL_SECONDS = 1.0
FOR_POLLS = 3
SLACK_LATENCY_SECONDS = 0.2
RANGE_STEP_SECONDS = 0.05


@dataclass(frozen=True)
class RollbackProfile:
    cycles: int
    floor_samples_per_cycle: int
    slow_slack_samples: int


FULL = RollbackProfile(cycles=5, floor_samples_per_cycle=2, slow_slack_samples=2)
QUICK = RollbackProfile(cycles=1, floor_samples_per_cycle=3, slow_slack_samples=1)


def kpi_query(pipeline_name: str) -> str:
    selector = f'job="web",pipeline="{pipeline_name}"'
    return (
        f'sum(rate(http_requests_total{{{selector},code=~"5.."}}[5s])) '
        f"/ sum(rate(http_requests_total{{{selector}}}[5s]))"
    )


def run(rig: BenchRig, profile: RollbackProfile) -> tuple[dict[str, Any], dict[str, Any]]:
    """The rollback section and the detection section."""
    assert rig.images is not None and rig.emulator is not None
    name, port = rig.name("rb"), rig.free_port()
    config = docker_pipeline(
        image=rig.images.repo,
        container_name=name,
        port=port,
        watch={"interval": f"{INTERVAL_SECONDS:g}s", "duration": "10m", "warmup": 0},
        kpis=[
            {
                "name": "error_rate",
                "query": kpi_query(name),
                "max": KPI_MAX,
                "for": FOR_POLLS,
                "no_data": "ignore",
            }
        ],
        auto_rollback=True,
    )
    rig.scrape({"pipeline": name}, port, name)
    floor = Floor(rig)
    bot = None
    try:
        bot = botctl.start_bot(rig, {name: config}, "rollback")
        engine = botctl.EngineCalls(bot)
        cycles = _cycles(rig, bot, engine, floor, name, port, profile)
        slow = _slow_slack(rig, bot, engine, name, port, profile.slow_slack_samples)
    finally:
        if bot is not None:
            bot.stop()
        floor.close()
        rig.emulator.set_latency("chat.update", 0)
        rig.emulator.set_latency("chat.postMessage", 0)
    return _rollback_result(floor.figures(), cycles, slow), _detection_result(cycles)


# The floor -----------------------------------------------------------------------------


class Floor:
    """Containers of images 1 and 2 made with the bot's run options, started by hand.

    A sample times a bare `docker start` of the stopped container of 1 to its first answer,
    then (for reference) stopping it and starting the stopped 2 to its first answer: the swap
    the bot has to make on one host. Samples are taken between the bot's cycles, so both see
    the same machine.
    """

    def __init__(self, rig: BenchRig) -> None:
        assert rig.docker is not None and rig.images is not None
        self.api = rig.docker.api
        self.port = rig.free_port()
        self.start_only: list[float] = []
        self.stop_start: list[float] = []
        options = container_options(
            Pipeline.model_validate(
                docker_pipeline(image=rig.images.repo, container_name="floor", port=self.port)
            )
        )
        self.ids: dict[str, str] = {}
        try:
            for version in ("1", "2"):
                container = rig.docker.containers.create(
                    rig.images.ref(version),
                    labels={RUN_LABEL: rig.id},
                    detach=True,
                    **{**options, "name": rig.name(f"floor-{version}")},
                )
                self.ids[version] = container.id
            # The engine's first start of a container does one-off work: not a sample.
            self.api.start(self.ids["1"])
            wait_for_version(self.port, "1")
            self.api.stop(self.ids["1"], timeout=10)
        except BaseException:
            self.close()
            raise

    def sample(self, count: int = 1) -> None:
        for _ in range(count):
            began = time.monotonic()
            self.api.start(self.ids["1"])
            self.start_only.append(wait_for_version(self.port, "1") - began)
            began = time.monotonic()
            self.api.stop(self.ids["1"], timeout=10)
            self.api.start(self.ids["2"])
            self.stop_start.append(wait_for_version(self.port, "2") - began)
            self.api.stop(self.ids["2"], timeout=10)

    def figures(self) -> dict[str, Any]:
        return {
            "docker_start": summarize(self.start_only),
            "docker_stop_start": summarize(self.stop_start),
        }

    def close(self) -> None:
        for container_id in self.ids.values():
            with contextlib.suppress(docker.errors.NotFound):
                self.api.remove_container(container_id, force=True)


# The bot -------------------------------------------------------------------------------


def _steps(rollout: Rollout, since: float) -> dict[str, float | None]:
    """When each step of a rollout started and ended, in seconds after `since` (wall time)."""
    marks: dict[str, float | None] = {
        "accepted": rollout.created_at - since,
        "live": (rollout.live_at - since) if rollout.live_at else None,
    }
    for step in rollout.steps:
        marks[f"{step.name} began"] = step.started_at - since
        marks[f"{step.name} ended"] = (step.ended_at - since) if step.ended_at else None
    return marks


def _wait_kpi_clean(rig: BenchRig, query: str, timeout: float = 30.0) -> None:
    """Until the KPI's window holds no errors (a bad version's samples age out of it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = rig.prometheus_value(query)
        if value is not None and value <= KPI_MAX / 4:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"KPI still {value} after {timeout:g} s")
        time.sleep(0.25)


def _rollback_command(
    rig: BenchRig, bot: InProcessBot, engine: botctl.EngineCalls, name: str, port: int
) -> dict[str, Any]:
    assert rig.emulator is not None
    botctl.wait_unlocked(bot.ctx.store, name)
    engine_before, slack_before = engine.count, len(rig.emulator.calls())
    sent_wall, sent = time.time(), time.monotonic()
    answer = botctl.command(bot, "/rollback", f"{name} 1")
    answered = wait_for_version(port, "1") - sent
    rollout = botctl.wait_for_rollout(bot.ctx.store, botctl.rollout_id_in(answer))
    if rollout.status is not RolloutStatus.good:
        raise AssertionError(f"rollback ended {rollout.status.value}: {rollout.error}")
    botctl.wait_unlocked(bot.ctx.store, name)
    return {
        "seconds": answered,
        "steps": _steps(rollout, sent_wall),
        "engine_calls": engine.count - engine_before,
        "slack_calls": len(rig.emulator.calls()) - slack_before,
    }


def _first_breaching_scrape(rig: BenchRig, query: str, start: float, end: float) -> float:
    for at, value in rig.prometheus_range(query, start, end, RANGE_STEP_SECONDS):
        if value > KPI_MAX:
            return at
    return math.nan


def _breach(rig: BenchRig, bot: InProcessBot, name: str, port: int) -> dict[str, Any]:
    store = bot.ctx.store
    query = kpi_query(name)
    timeline = Timeline(port)
    timeline.start()
    try:
        bad = botctl.deploy_and_wait(
            bot, name, "3", statuses=(RolloutStatus.live, RolloutStatus.rolled_back)
        )
        bad = botctl.wait_for_rollout(store, bad.id, (RolloutStatus.rolled_back,), timeout=60)
        assert bad.finished_at is not None
        detected_at = bad.finished_at
        auto = _auto_rollback(bot, name, after=bad.created_at)
        auto = botctl.wait_for_rollout(store, auto.id)
        if auto.status is not RolloutStatus.good:
            raise AssertionError(f"automatic rollback ended {auto.status.value}: {auto.error}")
        deadline = time.monotonic() + 10
        answered = None
        while answered is None and time.monotonic() < deadline:
            answered = timeline.first_answer("1", after=detected_at)
            time.sleep(POLL_SECONDS)
    finally:
        timeline.stop()
    if answered is None:
        raise AssertionError("version 1 did not answer after the automatic rollback")
    # From the deploy command on: no scrape before it is the bad version's, while the KPI's
    # window may still hold an earlier bad version's errors until just before.
    first_breach = _first_breaching_scrape(rig, query, bad.created_at, auto.created_at + 0.5)
    samples = [s for s in bot.immune.watcher.samples(bad.id) if s.kpi == "error_rate"]
    return {
        "detection_seconds": auto.created_at - first_breach,
        "breach_to_rollback_start_seconds": auto.created_at - detected_at,
        "rollback_seconds": answered - detected_at,
        "first_breaching_scrape_after_live": first_breach - (bad.live_at or math.nan),
        "polls": [(s.slot, s.value, s.verdict) for s in samples],
        "steps": _steps(auto, detected_at),
    }


def _auto_rollback(bot: InProcessBot, name: str, after: float) -> Rollout:
    store: Store = bot.ctx.store
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for rollout in store.recent_rollouts(name, 5):
            if rollout.kind is RolloutKind.auto_rollback and rollout.created_at >= after:
                return rollout
        time.sleep(0.02)
    raise AssertionError("the breach started no automatic rollback")


def _cycles(
    rig: BenchRig,
    bot: InProcessBot,
    engine: botctl.EngineCalls,
    floor: Floor,
    name: str,
    port: int,
    profile: RollbackProfile,
) -> list[dict[str, Any]]:
    botctl.deploy_and_wait(bot, name, "1", statuses=(RolloutStatus.live,))
    botctl.deploy_and_wait(bot, name, "2", statuses=(RolloutStatus.live,))
    cycles = []
    for index in range(profile.cycles):
        floor.sample(profile.floor_samples_per_cycle)
        from_command = _rollback_command(rig, bot, engine, name, port)
        _wait_kpi_clean(rig, kpi_query(name))
        from_breach = _breach(rig, bot, name, port)
        cycles.append({"command": from_command, "breach": from_breach})
        logger.info("rollback cycle %s: %s", index, cycles[-1])
        bot.ctx.store.reopen(name)
        _wait_kpi_clean(rig, kpi_query(name))
        botctl.deploy_and_wait(bot, name, "2", statuses=(RolloutStatus.live,))
    return cycles


def _slow_slack(
    rig: BenchRig, bot: InProcessBot, engine: botctl.EngineCalls, name: str, port: int, samples: int
) -> list[dict[str, Any]]:
    """/rollback again with every chat.update and chat.postMessage taking 200 ms."""
    assert rig.emulator is not None
    rig.emulator.set_latency("chat.update", SLACK_LATENCY_SECONDS)
    rig.emulator.set_latency("chat.postMessage", SLACK_LATENCY_SECONDS)
    results = []
    for _ in range(samples):
        results.append(_rollback_command(rig, bot, engine, name, port))
        botctl.deploy_and_wait(bot, name, "2", statuses=(RolloutStatus.live,))
    rig.emulator.set_latency("chat.update", 0)
    rig.emulator.set_latency("chat.postMessage", 0)
    return results


# Results -------------------------------------------------------------------------------


def _median_steps(records: list[dict[str, Any]]) -> dict[str, float]:
    keys = {key for record in records for key in record["steps"]}
    table = {}
    for key in keys:
        values = [r["steps"][key] for r in records if r["steps"].get(key) is not None]
        table[key] = median(values)
    return dict(sorted(table.items(), key=lambda item: item[1]))


def _rollback_result(
    floor: dict[str, Any], cycles: list[dict[str, Any]], slow: list[dict[str, Any]]
) -> dict[str, Any]:
    floor_p50 = floor["docker_start"]["p50"]
    swap_p50 = floor["docker_stop_start"]["p50"]
    rows = []
    for path, records in (
        ("/rollback command", [c["command"] for c in cycles]),
        ("confirmed breach (real Prometheus)", [c["breach"] for c in cycles]),
    ):
        key = "seconds" if path.startswith("/rollback") else "rollback_seconds"
        figures = summarize([r[key] for r in records])
        rows.append(
            {
                "path": path,
                **figures,
                "floor_p50": floor_p50,
                "ratio_p50": ratio(figures["p50"], floor_p50),
                "ratio_max": ratio(figures["max"], floor_p50),
                "ratio_p50_vs_stop_start": ratio(figures["p50"], swap_p50),
                "steps_median": _median_steps(records),
                "engine_calls_median": median([r["engine_calls"] for r in records])
                if records and "engine_calls" in records[0]
                else None,
                "slack_calls_median": median([r["slack_calls"] for r in records])
                if records and "slack_calls" in records[0]
                else None,
            }
        )
    slow_figures = summarize([r["seconds"] for r in slow])
    return {
        "method": (
            "wall time from the signed /rollback (or from Watcher.breach's detection) to the "
            f"restored version's first answer, seen by a {POLL_SECONDS * 1000:g} ms poller; "
            "floor: bare docker start (docker SDK) of a stopped container of the same image and "
            "run options, to its first answer, same poller, sampled between the bot's cycles"
        ),
        "floor": floor,
        "rows": rows,
        "slow_slack": {
            "latency_per_call_seconds": SLACK_LATENCY_SECONDS,
            **slow_figures,
            "steps_median": _median_steps(slow) if slow else {},
        },
        "target": {"ratio_max": 1.5, "against": "bare docker start + the same health wait"},
    }


def _detection_result(cycles: list[dict[str, Any]]) -> dict[str, Any]:
    floor = INTERVAL_SECONDS * FOR_POLLS
    detections = [c["breach"]["detection_seconds"] for c in cycles]
    figures = summarize([d for d in detections if math.isfinite(d)])
    return {
        "method": (
            "from the bad version's first breaching scrape (first instant the KPI expression, "
            f"evaluated by Prometheus at {RANGE_STEP_SECONDS * 1000:g} ms steps, exceeds max) "
            "to the automatic rollback's rollout being created"
        ),
        "config": {
            "interval_seconds": INTERVAL_SECONDS,
            "for": FOR_POLLS,
            "warmup": 0,
            "scrape_interval_seconds": 1.0,
            "kpi_max": KPI_MAX,
            "demo_tag": "3 (50% 5xx)",
        },
        "floor_seconds": floor,
        **figures,
        "ratio_p50": ratio(figures["p50"], floor),
        "ratio_max": ratio(figures["max"], floor),
        "samples": detections,
        "breach_to_rollback_start_p50": median(
            [c["breach"]["breach_to_rollback_start_seconds"] for c in cycles]
        ),
        "first_breaching_scrape_after_live_p50": median(
            [c["breach"]["first_breaching_scrape_after_live"] for c in cycles]
        ),
        "polls_of_first_cycle": cycles[0]["breach"]["polls"] if cycles else [],
        "target": {
            "max_seconds": floor + INTERVAL_SECONDS,
            "rule": "within one interval of interval x for",
        },
    }
