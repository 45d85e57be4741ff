"""Memory: the RSS of a `python -m bot` process at rest and after 10,000 commands.

The bot runs as users run it (`tests/support/bot_harness.BotProcess`); its RSS is VmRSS from
/proc/<pid>/status. Commands come from the keep-alive load process, ten clients at a time, a
mix that changes no state: `/pipeline`, `/pipeline <name>` (an engine look-up), `/deploy` and
`/rollback` refused because a rollout is in flight (held by another replica), an unknown
pipeline, and a usage error (`/deploy <pipeline>` alone opens the form since #13, so the
usage error is one word too many). RSS is sampled after each batch.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import redis

from bench import botctl
from bench.load import LoadDriver
from bench.rig import BenchRig
from bench.stats import median
from bot.domain.clock import SystemClock
from bot.store.keys import Keys
from bot.store.store import Store
from tests.support.bot_harness import SIGNING_SECRET, BotProcess, bot_settings, write_pipelines

MB = 1_000_000
FLAT_MB = 2.0
"""Growth over the second half of the commands below this is allocator noise."""


@dataclass(frozen=True)
class MemoryProfile:
    commands: int
    batches: int
    concurrency: int
    rest_seconds: float


FULL = MemoryProfile(commands=10_000, batches=10, concurrency=10, rest_seconds=5.0)
QUICK = MemoryProfile(commands=1_000, batches=4, concurrency=10, rest_seconds=2.0)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _rest_rss(pid: int, seconds: float) -> list[float]:
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(rss_bytes(pid) / MB)
        time.sleep(0.25)
    return samples


def run(rig: BenchRig, profile: MemoryProfile) -> dict[str, Any]:
    assert rig.redis is not None and rig.prometheus is not None and rig.emulator is not None
    assert rig.images is not None
    busy, _, busy_config = botctl.pipeline(rig, "mem")
    path = rig.workdir / "pipelines-memory.yml"
    write_pipelines(path, {"timezone": "UTC", "pipelines": {busy: busy_config}})
    prefix = f"bench-mem-{secrets.token_hex(3)}"
    env = bot_settings(
        redis_url=rig.redis.url,
        emulator=rig.emulator,
        pipelines_file=path,
        prometheus_url=rig.prometheus.url,
        prefix=prefix,
        lock_ttl_seconds=botctl.LOCK_TTL_SECONDS,
    )
    client = redis.Redis.from_url(rig.redis.url, decode_responses=True)
    store = Store(client, Keys(prefix), SystemClock())
    process = BotProcess(env, rig.emulator, rig.workdir / "memory-bot.log")
    driver = LoadDriver(SIGNING_SECRET, response_base=f"{rig.emulator.root_url}/response")
    try:
        process.start()
        assert process.process is not None
        pid = process.process.pid
        holder = botctl.hold_in_flight(store, busy, rig.images.repo, "2")
        cases = [
            {"command": "/pipeline", "text": "", "expect": busy},
            {"command": "/pipeline", "text": busy, "expect": busy},
            {"command": "/deploy", "text": f"{busy} 2", "expect": "in flight"},
            {"command": "/rollback", "text": f"{busy} 1", "expect": "in flight"},
            {"command": "/deploy", "text": "nosuch 1", "expect": "no pipeline"},
            {
                "command": "/deploy",
                "text": f"{busy} 2 3",
                "expect": "only a pipeline and a version",
            },
        ]
        url = process.url + "/slack/events"
        time.sleep(1.0)  # the scheduler's first passes, the first connections
        rest = _rest_rss(pid, profile.rest_seconds)
        used_memory_before = int(client.info("memory")["used_memory"])
        per_batch = profile.commands // profile.batches
        after: list[dict[str, Any]] = []
        done = errors = 0
        error_samples: list[Any] = []
        for _ in range(profile.batches):
            result = driver.run(url, cases, concurrency=profile.concurrency, total=per_batch)
            done += int(result["n"])
            errors += int(result["errors"])
            error_samples = error_samples or result["error_samples"]
            time.sleep(0.3)
            after.append({"commands": done, "rss_mb": rss_bytes(pid) / MB})
        time.sleep(1.0)
        final = _rest_rss(pid, min(2.0, profile.rest_seconds))
        used_memory_after = int(client.info("memory")["used_memory"])
        store.release_rollout(busy, holder.id)
    finally:
        driver.close()
        process.stop()
        client.close()
    rss_rest = median(rest)
    half = after[len(after) // 2 - 1]["rss_mb"] if len(after) >= 2 else rss_rest
    rss_end = median(final)
    second_half_growth = rss_end - half
    return {
        "method": (
            "python -m bot (BotProcess), VmRSS from /proc; commands from the keep-alive load "
            f"process, {profile.concurrency} clients, in {profile.batches} batches; a mix of "
            "/pipeline, /pipeline <name>, /deploy and /rollback refused (rollout in flight), "
            "unknown pipeline, usage error (one word too many)"
        ),
        "commands": done,
        "errors": errors,
        "error_samples": error_samples,
        "rss_rest_mb": rss_rest,
        "rss_rest_spread_mb": max(rest) - min(rest),
        "rss_after_half_mb": half,
        "rss_after_all_mb": rss_end,
        "growth_total_mb": rss_end - rss_rest,
        "growth_second_half_mb": second_half_growth,
        "batches": after,
        "redis_used_memory_growth_bytes_per_command": (used_memory_after - used_memory_before)
        / max(1, done),
        "target": {
            "rss_max_mb": 100.0,
            "flat_rule": f"growth over the second half of the commands < {FLAT_MB:g} MB",
            "met": bool(rss_end < 100.0 and second_half_growth < FLAT_MB),
        },
    }
