"""One polling-scale measurement in a process of its own (`python -m bench.polling_worker`).

Reads a JSON spec on stdin, builds the bot with `bot.app.build` and starts it (its real
scheduler and background jobs; no HTTP server), makes `watches` synthetic live rollouts
through the Store and `Watcher.begin`, lets them poll a real Prometheus, and writes one JSON
line of figures on stdout. Being alone in its process, its CPU time is the bot's.

What it adds to the bot, without changing it: a Redis connection class that counts round
trips (each `send_packed_command`: one command, or one pipeline), per thread; and a wrapper
around the watcher's `poll` (the scheduler calls the instance attribute) that records, per
poll, its scheduled time, lateness, thread CPU time, wall time and Redis round trips.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import sys
import threading
import time
from typing import Any

import redis
from prometheus_client import REGISTRY

from bench.machine import busy_cpu_seconds, process_cpu_seconds
from bench.stats import percentile, summarize
from bot.app import build
from bot.domain.models import Rollout, RolloutKind, RolloutStatus, new_id
from bot.settings import Settings

JsonDict = dict[str, Any]

_counts = threading.local()
_total_round_trips = 0
_total_lock = threading.Lock()


class CountingConnection(redis.Connection):
    """A Redis connection that counts what it sends: one count per round trip."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        global _total_round_trips
        _counts.n = getattr(_counts, "n", 0) + 1
        with _total_lock:
            _total_round_trips += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


def _thread_round_trips() -> int:
    return int(getattr(_counts, "n", 0))


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _histogram_counts(name: str) -> dict[float, float]:
    """Cumulative bucket counts of a histogram of the bot's metrics, summed over labels."""
    counts: dict[float, float] = {}
    for family in REGISTRY.collect():
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                counts[bound] = counts.get(bound, 0.0) + sample.value
    return counts


def _bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding the q-quantile of what was observed in between."""
    bounds = sorted(after)
    deltas = [after[b] - before.get(b, 0.0) for b in bounds]
    if not deltas or deltas[-1] <= 0:
        return math.nan
    wanted = deltas[-1] * q
    for bound, count in zip(bounds, deltas, strict=True):
        if count >= wanted:
            return bound
    return math.inf


def _redis_server_stats(client: redis.Redis) -> tuple[int, float]:
    stats: dict[str, Any] = client.info("commandstats")
    commands = sum(int(v["calls"]) for v in stats.values() if isinstance(v, dict))
    cpu: dict[str, Any] = client.info("cpu")
    return commands, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def measure(spec: JsonDict) -> JsonDict:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        slack_bot_token="xoxb-bench",
        slack_signing_secret="bench",
        slack_api_url=spec["slack_api_url"],
        slack_token_verification=False,
        redis_url=spec["redis_url"],
        redis_prefix=spec["prefix"],
        prometheus_url=spec["prometheus_url"],
        pipelines_file=spec["pipelines_file"],
        host="127.0.0.1",
        port=0,
        log_level="INFO",
    )
    immune = build(settings)
    pool = immune.ctx.store.redis.connection_pool
    # build() reads Redis' settings (one connection): drop it, so every poll's connection counts.
    pool.disconnect()
    pool.reset()
    if getattr(pool, "_created_connections", 0):
        raise RuntimeError("the bot's Redis pool connected before round trips could be counted")
    pool.connection_class = CountingConnection
    watcher = immune.watcher
    interval = float(spec["interval"])
    polls: list[JsonDict] = []
    polls_lock = threading.Lock()
    starts: dict[str, float] = {}
    original_poll = watcher.poll

    def counted_poll(rollout_id: str) -> Any:
        entered = time.time()
        started = starts[rollout_id]
        slot = math.floor((entered - started) / interval + 1e-3)
        scheduled = started + slot * interval
        trips, cpu, wall = _thread_round_trips(), time.thread_time(), time.perf_counter()
        try:
            return original_poll(rollout_id)
        finally:
            record = {
                "scheduled": scheduled,
                "lateness": entered - scheduled,
                "cpu": time.thread_time() - cpu,
                "wall": time.perf_counter() - wall,
                "round_trips": _thread_round_trips() - trips,
            }
            with polls_lock:
                polls.append(record)

    watcher.poll = counted_poll  # type: ignore[method-assign]
    immune.start()
    observer = redis.Redis.from_url(spec["redis_url"], decode_responses=True)
    watches, kpis = int(spec["watches"]), int(spec["kpis_per_watch"])
    names = sorted(immune.ctx.config.pipelines)
    first_poll_at = time.time() + 1.0
    for index, name in enumerate(names[:watches]):
        pipeline = immune.ctx.config.pipelines[name]
        # Live at spread instants of the past interval: polls spread over the interval, the
        # first of each within the next one, as rollouts that went live at different times.
        live_at = first_poll_at - interval + interval * index / watches
        rollout = Rollout(
            id=new_id("r"),
            pipeline=name,
            kind=RolloutKind.deploy,
            version="1",
            reference=f"{pipeline.image}:1",
            image_tag="1",
            requested_by="U0BENCH",
            created_at=live_at - 1,
            status=RolloutStatus.live,
            live_at=live_at,
            channel=pipeline.channel,
        )
        immune.ctx.store.create_rollout(rollout)
        immune.ctx.store.update_pipeline(name, live_version="1", live_rollout=rollout.id)
        starts[rollout.id] = live_at
        watcher.begin(rollout, pipeline)
    setup_late = time.time() - first_poll_at
    window_start = first_poll_at + interval * float(spec["warmup_intervals"])
    window_end = window_start + interval * float(spec["measure_intervals"])

    def sleep_until(at: float) -> None:
        time.sleep(max(0.0, at - time.time()))

    sleep_until(window_start)
    machine0 = busy_cpu_seconds()
    cpu0, prom0, trips0 = (
        _process_cpu(),
        process_cpu_seconds(spec.get("prometheus_pid")),
        _total_round_trips,
    )
    commands0, redis_cpu0 = _redis_server_stats(observer)
    lateness0 = _histogram_counts("immune_poll_lateness_seconds")
    sleep_until(window_end)
    machine1 = busy_cpu_seconds()
    cpu1, prom1, trips1 = (
        _process_cpu(),
        process_cpu_seconds(spec.get("prometheus_pid")),
        _total_round_trips,
    )
    commands1, redis_cpu1 = _redis_server_stats(observer)
    # Polls that began in the window may still run: let them end before reading them.
    time.sleep(min(interval, 5.0))
    lateness1 = _histogram_counts("immune_poll_lateness_seconds")
    immune.stop()
    with polls_lock:
        in_window = [p for p in polls if window_start <= p["scheduled"] < window_end]
    seconds = window_end - window_start
    expected = watches * round(seconds / interval)
    poll_trips = sum(p["round_trips"] for p in in_window)
    all_trips = trips1 - trips0
    lateness = [p["lateness"] for p in in_window]
    process_cpu = cpu1 - cpu0
    return {
        "kpis": watches * kpis,
        "watches": watches,
        "kpis_per_watch": kpis,
        "interval_seconds": interval,
        "window_seconds": seconds,
        "setup_overran_seconds": max(0.0, setup_late),
        "polls": len(in_window),
        "polls_expected": expected,
        "kpi_polls_per_second": len(in_window) * kpis / seconds,
        "process_cpu_seconds": process_cpu,
        "process_cpu_share_of_one_core": process_cpu / seconds,
        "process_cpu_per_poll": process_cpu / len(in_window) if in_window else math.nan,
        "process_cpu_per_kpi": process_cpu / (len(in_window) * kpis) if in_window else math.nan,
        "poll_thread_cpu": summarize([p["cpu"] for p in in_window]),
        "poll_wall": summarize([p["wall"] for p in in_window]),
        "redis_round_trips_per_poll": poll_trips / len(in_window) if in_window else math.nan,
        "redis_round_trips_per_kpi": poll_trips / (len(in_window) * kpis)
        if in_window
        else math.nan,
        "redis_round_trips_per_second_total": all_trips / seconds,
        "redis_round_trips_per_second_outside_polls": (all_trips - poll_trips) / seconds,
        "redis_commands_per_second": (commands1 - commands0) / seconds,
        "redis_server_cpu_share": (redis_cpu1 - redis_cpu0) / seconds,
        "prometheus_cpu_share": (prom1 - prom0) / seconds,
        "machine_busy_cores": (machine1 - machine0) / seconds,
        "other_processes_cores": (
            (machine1 - machine0) - process_cpu - (prom1 - prom0) - (redis_cpu1 - redis_cpu0)
        )
        / seconds,
        "lateness": summarize(lateness),
        "lateness_p99": percentile(lateness, 99) if lateness else math.nan,
        "bot_metric_lateness_p99_bucket": _bucket_quantile(lateness0, lateness1, 0.99),
    }


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    logging.basicConfig(
        filename=spec["log"],
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s",
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    result = measure(spec)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
