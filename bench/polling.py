"""Polling scale: 10, 100 and 1,000 watched KPIs against a real Prometheus.

Each scale runs in a fresh `python -m bench.polling_worker` (so the CPU it reports is the
bot's alone): pipelines of `KPIS_PER_WATCH` KPIs each, watched every `INTERVAL_SECONDS`, one
synthetic live rollout per pipeline made through the Store and `Watcher.begin`, the bot's own
scheduler and background jobs running. Every KPI is a real instant query of a rate over
series Prometheus scrapes from itself.
"""

from __future__ import annotations

import itertools
import json
import math
import secrets
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from bench.rig import BenchRig
from bench.stats import ratio
from tests.support.bot_harness import CHANNEL, write_pipelines
from tests.support.services import dies_with_parent

KPIS_PER_WATCH = 10
INTERVAL_SECONDS = 10.0
SELF_JOB_LABEL = "bench-prometheus"
QUERY = f'sum(rate(prometheus_http_requests_total{{job="web",pipeline="{SELF_JOB_LABEL}"}}[1m]))'


@dataclass(frozen=True)
class PollingProfile:
    kpis: tuple[int, ...]
    warmup_intervals: float
    measure_intervals: float


FULL = PollingProfile(kpis=(10, 100, 1000), warmup_intervals=1, measure_intervals=2)
QUICK = PollingProfile(kpis=(10, 100, 1000), warmup_intervals=0, measure_intervals=1)


def _pipelines(rig: BenchRig, watches: int) -> dict[str, Any]:
    assert rig.images is not None
    pipelines = {}
    for index in range(watches):
        name = rig.name(f"poll{index:04d}")
        pipelines[name] = {
            "channel": CHANNEL,
            "target": "docker",
            "image": rig.images.repo,
            "container": {"name": name, "network_mode": "host"},
            "health": {"url": "http://127.0.0.1:9/healthz"},
            "watch": {"interval": f"{INTERVAL_SECONDS:g}s", "duration": "1h"},
            "kpis": [
                {"name": f"kpi{k}", "query": QUERY, "max": 1e12, "no_data": "ignore"}
                for k in range(KPIS_PER_WATCH)
            ],
        }
    return pipelines


def _measure(rig: BenchRig, kpis: int, profile: PollingProfile) -> dict[str, Any]:
    assert rig.redis is not None and rig.prometheus is not None and rig.emulator is not None
    watches = max(1, kpis // KPIS_PER_WATCH)
    path = rig.workdir / f"pipelines-poll-{kpis}.yml"
    write_pipelines(path, {"timezone": "UTC", "pipelines": _pipelines(rig, watches)})
    spec = {
        "redis_url": rig.redis.url,
        "prometheus_url": rig.prometheus.url,
        "prometheus_pid": rig.prometheus.pid,
        "slack_api_url": rig.emulator.base_url,
        "prefix": f"bench-poll-{kpis}-{secrets.token_hex(3)}",
        "pipelines_file": str(path),
        "watches": watches,
        "kpis_per_watch": KPIS_PER_WATCH,
        "interval": INTERVAL_SECONDS,
        "warmup_intervals": profile.warmup_intervals,
        "measure_intervals": profile.measure_intervals,
        "log": str(rig.workdir / f"polling-{kpis}.log"),
    }
    budget = 120 + INTERVAL_SECONDS * (profile.warmup_intervals + profile.measure_intervals + 2)
    result = subprocess.run(
        [sys.executable, "-m", "bench.polling_worker"],
        input=json.dumps(spec) + "\n",
        capture_output=True,
        text=True,
        timeout=budget,
        check=False,
        preexec_fn=dies_with_parent(),
    )
    if result.returncode != 0 or not result.stdout.strip():
        raise RuntimeError(
            f"polling worker for {kpis} KPIs failed ({result.returncode}):\n{result.stderr[-3000:]}"
        )
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def run(rig: BenchRig, profile: PollingProfile) -> dict[str, Any]:
    assert rig.prometheus is not None
    rig.scrape({"pipeline": SELF_JOB_LABEL}, rig.prometheus.port, "prometheus-self")
    rig.prometheus.wait_for_series(QUERY, timeout=30)
    scales = [_measure(rig, kpis, profile) for kpis in profile.kpis]
    growth = []
    for smaller, larger in itertools.pairwise(scales):
        growth.append(
            {
                "from_kpis": smaller["kpis"],
                "to_kpis": larger["kpis"],
                "kpis_factor": larger["kpis"] / smaller["kpis"],
                "cpu_seconds_factor": ratio(
                    larger["process_cpu_seconds"], smaller["process_cpu_seconds"]
                ),
                "cpu_per_poll_factor": ratio(
                    larger["process_cpu_per_poll"], smaller["process_cpu_per_poll"]
                ),
                "round_trips_per_poll_factor": ratio(
                    larger["redis_round_trips_per_poll"], smaller["redis_round_trips_per_poll"]
                ),
                "round_trips_per_second_factor": ratio(
                    larger["redis_round_trips_per_second_total"],
                    smaller["redis_round_trips_per_second_total"],
                ),
                "lateness_p99_factor": ratio(larger["lateness_p99"], smaller["lateness_p99"]),
            }
        )
    top = max(scales, key=lambda s: s["kpis"])
    return {
        "method": (
            f"one fresh bot process per scale (bot.app.build + start, no HTTP), {KPIS_PER_WATCH} "
            f"KPIs per watch, interval {INTERVAL_SECONDS:g} s, watches live at instants spread "
            "over an interval; process CPU from getrusage over the measured window; Redis round "
            "trips counted per send on the bot's own connections (a pipeline is one); lateness "
            "= poll start - its slot's scheduled instant, measured at the job's entry"
        ),
        "query": QUERY,
        "scales": scales,
        "growth": growth,
        "target": {
            "kpis": 1000,
            "per_seconds": INTERVAL_SECONDS,
            "cpu_share_max": 1.0,
            "lateness_p99_max_seconds": 1.0,
            "met": bool(
                top["kpis"] >= 1000
                and top["process_cpu_share_of_one_core"] < 1.0
                and top["lateness_p99"] < 1.0
                and top["polls"] >= top["polls_expected"]
                and not math.isnan(top["lateness_p99"])
            ),
        },
    }
