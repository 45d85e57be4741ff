"""What one KPI poll costs (docs/SCALING.md): Redis round trips and commands, CPU, wall time.

The production Watcher polls a live rollout's KPIs against the session's real Prometheus, which
scrapes its own /metrics here (real counters behind real `rate()` queries). A FrozenClock puts
each call on the next poll slot, and a connection class counts what reaches Redis.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from apscheduler.executors.pool import ThreadPoolExecutor as SchedulerPool
from apscheduler.schedulers.background import BackgroundScheduler

from bot.app import Immune, build
from bot.domain.clock import FrozenClock
from bot.domain.models import Rollout, RolloutKind, RolloutStatus, WatchState
from bot.kpi_sources.prometheus import PrometheusSource
from bot.plugins import parse_pipelines
from bot.ports import SilentNotifier
from bot.services.recovery import recover_orphans
from bot.services.watch import Watcher
from bot.settings import Settings
from bot.store.keys import Keys
from bot.store.store import Store
from tests.support.bot_harness import bot_settings, write_pipelines

pytestmark = pytest.mark.prometheus

POLLS = 60
KPI_COUNTS = (1, 3, 5)


class CountingConnection(redis.Connection):
    """A redis-py connection that counts requests sent (one per command or pipeline)."""

    round_trips = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.round_trips += 1
        super().send_packed_command(command, check_health)


def queries(label: str) -> list[str]:
    selector = f'pipeline="{label}"'
    return [
        f'(sum(rate(prometheus_http_requests_total{{{selector},code=~"5.."}}[1m])) or vector(0))'
        f" / sum(rate(prometheus_http_requests_total{{{selector}}}[1m]))",
        f"sum(rate(prometheus_http_requests_total{{{selector}}}[1m]))",
        f"histogram_quantile(0.99, sum by (le) (rate(prometheus_http_request_duration_seconds_bucket{{{selector}}}[1m])))",
        f"sum(process_resident_memory_bytes{{{selector}}})",
        f"max(scrape_duration_seconds{{{selector}}})",
    ]


QUERIES = len(queries(""))


def kpis(count: int, label: str) -> list[dict[str, Any]]:
    texts = queries(label)
    return [
        {"name": f"kpi{i}", "query": texts[i % len(texts)], "max": 1e12, "no_data": "ignore"}
        for i in range(count)
    ]


@pytest.fixture
def scraped_prometheus(prometheus_server: Any) -> Iterator[Any]:
    """Prometheus scraping itself under the label pipeline="cost"."""
    prometheus_server.set_targets({"pipeline": "cost"}, [f"127.0.0.1:{prometheus_server.port}"])
    # rate() needs two scrapes of the new target.
    for kpi in kpis(QUERIES, "cost"):
        prometheus_server.wait_for_series(kpi["query"], timeout=20)
    yield prometheus_server


def measure(
    tmp_path: Path, redis_server: Any, emulator: Any, prometheus: Any, prefix: str, kpi_count: int
) -> dict[str, float]:
    config = {
        "pipelines": {
            "web": {
                "channel": "C0DEPLOY",
                "image": "demo/web",
                "container": {"name": "cost-web"},
                "health": {"url": "http://127.0.0.1:9/healthz"},
                "watch": {"interval": "1h", "duration": "1000h", "warmup": 0},
                "kpis": kpis(kpi_count, "cost"),
            }
        }
    }
    path = tmp_path / f"pipelines-{kpi_count}.yml"
    write_pipelines(path, config)
    env = bot_settings(
        redis_url=redis_server.url,
        emulator=emulator,
        pipelines_file=path,
        prometheus_url=prometheus.url,
        prefix=f"{prefix}-{kpi_count}",
    )
    settings = Settings(_env_file=None, **{k.lower(): v for k, v in env.items()})  # type: ignore[call-arg]
    started = time.time()
    clock = FrozenClock(started)
    immune: Immune = build(settings, clock=clock, notifier=SilentNotifier())  # never started
    try:
        counting = redis.Redis(
            connection_pool=redis.ConnectionPool.from_url(
                redis_server.url, decode_responses=True, connection_class=CountingConnection
            )
        )
        immune.ctx.store = Store(counting, Keys(settings.redis_prefix), clock)
        rollout = Rollout(
            id=f"r-cost-{kpi_count}",
            pipeline="web",
            kind=RolloutKind.deploy,
            version="1",
            reference="demo/web:1",
            requested_by="U0COST",
            created_at=started,
            status=RolloutStatus.live,
            live_at=started,
        )
        immune.ctx.store.create_rollout(rollout)
        watch = WatchState(
            rollout_id=rollout.id,
            pipeline="web",
            started_at=started,
            interval=3600,
            duration=3600 * 1000,
            warmup=0,
        )
        counting.hset(immune.ctx.store.keys.watches(), rollout.id, watch.model_dump_json())
        watcher = Watcher(
            immune.ctx, BackgroundScheduler(), {"prometheus": PrometheusSource(prometheus.url)}
        )
        before_commands = int(counting.info("stats")["total_commands_processed"])
        CountingConnection.round_trips = 0
        cpu: list[float] = []
        wall: list[float] = []
        for slot in range(1, POLLS + 1):
            clock.advance(3600)
            cpu_started, wall_started = time.thread_time(), time.perf_counter()
            outcome = watcher.poll(rollout.id)
            cpu.append(time.thread_time() - cpu_started)
            wall.append(time.perf_counter() - wall_started)
            assert outcome is not None and outcome.slot == slot and outcome.breached is None
            assert all(s.value is not None for s in outcome.samples), outcome.samples
        round_trips = CountingConnection.round_trips
        # The INFO call itself is one more command.
        commands = int(counting.info("stats")["total_commands_processed"]) - before_commands - 1
        keys = immune.ctx.store.keys
        samples_bytes = int(counting.memory_usage(keys.samples(rollout.id)) or 0)
        claim_bytes = int(counting.memory_usage(keys.poll_slot(rollout.id, 1)) or 0)
        counting.close()
        return {
            "round_trips": round_trips / POLLS,
            "commands": commands / POLLS,
            "cpu_ms": statistics.median(cpu) * 1000,
            "cpu_p90_ms": statistics.quantiles(cpu, n=10)[-1] * 1000,
            "wall_ms": statistics.median(wall) * 1000,
            "bytes_per_sample": samples_bytes / (POLLS * kpi_count),
            "bytes_per_claim": claim_bytes,
        }
    finally:
        immune.stop()


def test_cost_of_one_poll(
    tmp_path: Path,
    redis_server: Any,
    redis_client: Any,
    emulator: Any,
    scraped_prometheus: Any,
    redis_prefix: str,
) -> None:
    results = {
        count: measure(tmp_path, redis_server, emulator, scraped_prometheus, redis_prefix, count)
        for count in KPI_COUNTS
    }
    lines = ["", "one poll (median of 60), Prometheus 2.42 and Redis on loopback:"]
    for count, result in results.items():
        lines.append(
            f"  {count} KPI(s): {result['round_trips']:.1f} Redis round trips, "
            f"{result['commands']:.1f} commands, CPU {result['cpu_ms']:.2f} ms "
            f"(p90 {result['cpu_p90_ms']:.2f}), wall {result['wall_ms']:.2f} ms; "
            f"Redis memory {result['bytes_per_sample']:.0f} B per sample, "
            f"{result['bytes_per_claim']:.0f} B per slot claim"
        )
    print("\n".join(lines))
    for count, result in results.items():
        # A claim, the watch and the rollout, then per KPI its streak and one pipelined write.
        # Read the watch, claim the slot, read the rollout, read the streaks, write it all.
        assert result["round_trips"] <= 5, result
        assert result["cpu_ms"] < 50 * count, result


def test_cost_of_the_passes_every_replica_runs(
    tmp_path: Path, redis_server: Any, redis_client: Any, emulator: Any, redis_prefix: str
) -> None:
    """Watcher.sync (every second) and recover_orphans (every 2 s) grow with watches/pipelines."""
    pipelines = 300
    raw = {
        "pipelines": {
            f"p{i}": {
                "channel": "C0DEPLOY",
                "image": "demo/web",
                "container": {"name": f"cost-{i}"},
                "health": {"url": "http://127.0.0.1:9/healthz"},
            }
            for i in range(pipelines)
        }
    }
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        redis_url=redis_server.url,
        redis_prefix=redis_prefix,
        slack_bot_token="xoxb-test",
        slack_signing_secret="test",
        slack_api_url=emulator.base_url,
        slack_token_verification=False,
    )
    immune = build(settings, config=parse_pipelines(raw), notifier=SilentNotifier())
    scheduler = BackgroundScheduler(timezone="UTC", executors={"default": SchedulerPool(20)})
    scheduler.start(paused=True)  # jobs are added, never run
    try:
        for i in range(pipelines):
            immune.ctx.store.update_pipeline(f"p{i}", live_version="1")
        recovery_cpu = []
        for _ in range(10):
            started = time.thread_time()
            assert recover_orphans(immune.ctx) == []
            recovery_cpu.append(time.thread_time() - started)

        watcher = Watcher(
            immune.ctx, scheduler, {"prometheus": PrometheusSource("http://127.0.0.1:9")}
        )
        now = time.time()
        watches = 500
        for i in range(watches):
            state = WatchState(
                rollout_id=f"r{i}",
                pipeline=f"p{i % pipelines}",
                started_at=now,
                interval=5,
                duration=600,
                warmup=1,
            )
            redis_client.hset(immune.ctx.store.keys.watches(), f"r{i}", state.model_dump_json())
        started = time.thread_time()
        watcher.sync()
        first_sync = time.thread_time() - started
        sync_cpu = []
        for _ in range(20):
            started = time.thread_time()
            watcher.sync()
            sync_cpu.append(time.thread_time() - started)
        assert len(scheduler.get_jobs()) == watches
    finally:
        scheduler.shutdown(wait=False)
        immune.stop()
    print(
        f"\nrecovery pass over {pipelines} pipelines: CPU {statistics.median(recovery_cpu) * 1000:.1f} ms "
        f"(every 2 s, each replica); watch sync of {watches} watches: CPU "
        f"{statistics.median(sync_cpu) * 1000:.1f} ms (every 1 s, each replica; first "
        f"{first_sync * 1000:.0f} ms)"
    )
    assert statistics.median(recovery_cpu) < 1.0 and statistics.median(sync_cpu) < 1.0
