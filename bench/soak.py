"""Soak: many deploys, rollbacks and commands against two replicas, one killed again and again.

Two `python -m bot` replicas share the rig's Redis: a steady one that lives through the whole
soak (its RSS and threads are the "flat over time" figures) and one that is SIGKILLed and
started again every `kill_every` seconds, wherever the work stands (mid-rollout included: the
steady replica adopts what it ran). The loop deploys versions 1 and 2 in turn with a watch on
each (polling the rig's Prometheus), rolls back by command every third step, and sends
read-only commands between them (/pipeline, refusals, bad input) to either replica.

Reported: RSS and threads of the steady replica over time; Redis keys (in total and those
without a TTL, by kind) and memory over time and after the transient keys' TTLs; the
pipeline's containers left on the engine against `keep_versions`; every acknowledged rollout
settled exactly once (none lost: each ack's rollout reaches a final status; none duplicated:
the pipeline's history holds exactly the rollouts acknowledged, plus none).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import redis

from bench import botctl
from bench.load import LoadDriver
from bench.memory import MB, rss_bytes
from bench.rig import BenchRig
from bot.domain.clock import SystemClock
from bot.domain.models import RolloutStatus
from bot.store.keys import Keys
from bot.store.store import Store
from bot.targets.docker_host import LABEL_PIPELINE
from tests.support.bot_harness import (
    CHANNEL,
    SIGNING_SECRET,
    BotProcess,
    bot_settings,
    write_pipelines,
)
from tests.support.slack_client import SignedSlackClient

logger = logging.getLogger(__name__)

KEEP_VERSIONS = 3
SETTLE_SECONDS = 90.0  # a rollout whose runner was killed is adopted after the lock TTL


@dataclass(frozen=True)
class SoakProfile:
    rollouts: int  # deploys and rollbacks, each with its watch
    commands: int  # read-only commands between them
    kill_every: float  # seconds between SIGKILLs of the restarted replica
    sample_every: float  # seconds between RSS / Redis samples


FULL = SoakProfile(rollouts=200, commands=10_000, kill_every=120.0, sample_every=10.0)
QUICK = SoakProfile(rollouts=24, commands=1_200, kill_every=30.0, sample_every=5.0)


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise RuntimeError(f"no Threads for pid {pid}")


class Sampler(threading.Thread):
    """RSS and threads of the steady replica, Redis keys and memory, every few seconds."""

    def __init__(self, pid: int, client: redis.Redis, prefix: str, every: float) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.pid, self.client, self.prefix, self.every = pid, client, prefix, every
        self.samples: list[dict[str, Any]] = []
        self.began = time.monotonic()
        self.done = threading.Event()

    def sample(self) -> dict[str, Any]:
        keys = list(self.client.scan_iter(match=f"{self.prefix}:*", count=1000))
        return {
            "t": round(time.monotonic() - self.began, 1),
            "rss_mb": rss_bytes(self.pid) / MB,
            "threads": threads_of(self.pid),
            "redis_keys": len(keys),
            "redis_used_memory_mb": int(self.client.info("memory")["used_memory"]) / MB,
        }

    def run(self) -> None:
        while not self.done.wait(self.every):
            with contextlib.suppress(Exception):  # a sample is lost, never the soak
                self.samples.append(self.sample())


def key_census(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """Keys by kind (the segment after the prefix): all, and those that never expire."""
    kinds: Counter[str] = Counter()
    lasting: Counter[str] = Counter()
    longest_ttl = 0.0
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        kind = key[len(prefix) + 1 :].split(":", 1)[0]
        kinds[kind] += 1
        ttl = client.pttl(key)
        if ttl < 0:
            lasting[kind] += 1
        else:
            longest_ttl = max(longest_ttl, ttl / 1000)
    return {
        "keys": sum(kinds.values()),
        "by_kind": dict(kinds),
        "without_ttl_by_kind": dict(lasting),
        "longest_ttl_seconds": longest_ttl,
    }


def run(rig: BenchRig, profile: SoakProfile) -> dict[str, Any]:
    assert rig.redis is not None and rig.prometheus is not None and rig.emulator is not None
    assert rig.images is not None and rig.docker is not None
    name, port, config = botctl.pipeline(
        rig,
        "soak",
        keep_versions=KEEP_VERSIONS,
        watch={"interval": "1s", "duration": "3s", "warmup": 0},
        kpis=[
            {
                "name": "up",
                # Over 10 s, so the second a swap takes never reads as down.
                "query": f'max_over_time(up{{pipeline="{name_label(rig)}"}}[10s])',
                "min": 1,
                "no_data": "ignore",
            }
        ],
    )
    rig.scrape({"pipeline": name_label(rig)}, port, name)
    path = rig.workdir / "pipelines-soak.yml"
    write_pipelines(
        path, {"timezone": "UTC", "admins": [botctl.ADMIN], "pipelines": {name: config}}
    )
    prefix = f"bench-soak-{secrets.token_hex(3)}"
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
    generation = 0
    emulator = rig.emulator

    def replica(role: str) -> BotProcess:
        nonlocal generation
        generation += 1
        process = BotProcess(env, emulator, rig.workdir / f"soak-{role}-{generation}.log")
        process.start(timeout=40.0)
        return process

    steady = replica("steady")
    restarted = replica("restarted")
    assert steady.process is not None
    sampler = Sampler(steady.process.pid, client, prefix, profile.sample_every)
    driver = LoadDriver(SIGNING_SECRET, response_base=f"{rig.emulator.root_url}/response")
    cases = [
        {"command": "/pipeline", "text": "", "expect": name},
        {"command": "/pipeline", "text": name, "expect": name},
        {"command": "/deploy", "text": "nosuch 1", "expect": "no pipeline"},
        {"command": "/rollback", "text": "nosuch", "expect": "no pipeline"},
    ]
    acked: list[str] = []
    refused: Counter[str] = Counter()
    kills = 0
    commands_sent = command_errors = 0
    started = time.monotonic()
    next_kill = started + profile.kill_every
    per_round = max(1, profile.commands // profile.rollouts)
    versions = ["1", "2"]
    live = None
    rng = random.Random(7)
    try:
        sampler.samples.append(sampler.sample())
        sampler.start()
        for step in range(profile.rollouts):
            target = rng.choice([steady, restarted])
            batch = driver.run(target.url + "/slack/events", cases, concurrency=4, total=per_round)
            commands_sent += int(batch["n"])
            command_errors += int(batch["errors"])
            if live is not None and step % 3 == 2:
                previous = versions[0] if live == versions[1] else versions[1]
                words = ("/rollback", f"{name} {previous}")
            else:
                words = ("/deploy", f"{name} {versions[step % 2]}")
            botctl.wait_unlocked(store, name, timeout=SETTLE_SECONDS)
            sender = rng.choice([steady, restarted])
            answer = _ack(sender.slack, *words)
            found = botctl.ROLLOUT_ID.search(answer)
            if found is None:
                refused[answer[:80]] += 1
                logger.warning("soak: %s %s refused: %s", *words, answer[:300])
                continue
            acked.append(found.group(1))
            if time.monotonic() >= next_kill:
                # Mid-rollout, as like as not: the steady replica adopts what this one ran.
                time.sleep(rng.uniform(0.0, 1.5))
                restarted.kill()
                kills += 1
                restarted = replica("restarted")
                next_kill = time.monotonic() + profile.kill_every
            settled = botctl.wait_for_rollout(store, acked[-1], timeout=SETTLE_SECONDS)
            if settled.status is RolloutStatus.good:
                live = settled.version
        soak_seconds = time.monotonic() - started
        for rollout_id in acked:  # each acknowledged rollout reached a final status
            botctl.wait_for_rollout(store, rollout_id, timeout=SETTLE_SECONDS)
        at_end = key_census(client, prefix)
        sampler.samples.append(sampler.sample())
        # Transient keys (locks, claims, poll slots, seen request ids) expire on their own.
        time.sleep(min(at_end["longest_ttl_seconds"], 90.0) + 1)
        after_ttls = key_census(client, prefix)
    finally:
        sampler.done.set()
        driver.close()
        steady.stop()
        restarted.stop()
    history: list[str] = client.zrange(f"{prefix}:pipeline:{name}:rollouts", 0, -1)  # type: ignore[assignment]
    records: list[str | None] = client.mget([f"{prefix}:rollout:{i}" for i in history])  # type: ignore[assignment]
    rollouts = [json.loads(raw) if raw is not None else None for raw in records]
    client.close()
    statuses = Counter(r["status"] for r in rollouts if r is not None)
    # Why each rollout that did not end good ended as it did (a kill mid-swap may roll back).
    not_good = [
        {"id": r["id"], "status": r["status"], "error": r.get("error") or "", "notes": r["notes"]}
        for r in rollouts
        if r is not None and r["status"] != "good"
    ]
    by_command = [r for r in rollouts if r is not None and r["kind"] in ("deploy", "rollback")]
    lost = [i for i in acked if store_status(rollouts, i) not in _FINAL]
    duplicated = len(by_command) - len(set(acked))
    containers = rig.docker.containers.list(all=True, filters={"label": f"{LABEL_PIPELINE}={name}"})
    samples = sampler.samples
    second_half = samples[len(samples) // 2 :] or [{"rss_mb": 0.0, "threads": 0}]
    rss_growth = second_half[-1]["rss_mb"] - second_half[0]["rss_mb"]
    thread_growth = max(s["threads"] for s in second_half) - second_half[0]["threads"]
    kept_kinds = set(after_ttls["without_ttl_by_kind"]) - HISTORY_KINDS
    kept_records = after_ttls["without_ttl_by_kind"].get("rollout", 0)
    return {
        "method": (
            "two python -m bot replicas (BotProcess) on one Redis; one steady, one SIGKILLed and "
            f"restarted every {profile.kill_every:g} s; {profile.rollouts} deploys of versions "
            "1/2 and /rollback every third, each watched (1 s polls for 3 s against "
            f"Prometheus); {per_round} read-only commands from the load process before each"
        ),
        "rollouts_acknowledged": len(acked),
        "refused": dict(refused),
        "statuses": dict(statuses),
        "not_good": not_good,
        "rollouts_lost": len(lost),
        "rollouts_duplicated": duplicated,
        "replica_kills": kills,
        "commands": commands_sent,
        "command_errors": command_errors,
        "soak_seconds": soak_seconds,
        "steady_rss_mb": {
            "start": samples[0]["rss_mb"] if samples else None,
            "half": second_half[0]["rss_mb"],
            "end": samples[-1]["rss_mb"] if samples else None,
            "growth_second_half": rss_growth,
        },
        "steady_threads": {
            "start": samples[0]["threads"] if samples else None,
            "half": second_half[0]["threads"],
            "max": max((s["threads"] for s in samples), default=None),
            "end": samples[-1]["threads"] if samples else None,
            "growth_second_half": thread_growth,
        },
        "redis_at_end": at_end,
        "redis_after_ttls": after_ttls,
        "redis_keys_per_rollout_kept": after_ttls["keys"] / max(1, len(acked)),
        "containers_left": len(containers),
        "keep_versions": KEEP_VERSIONS,
        "samples": samples,
        "target": {
            "rule": (
                "0 rollouts lost or duplicated; containers left <= keep_versions + 1 (the live "
                "one); over the second half, steady RSS growth < 5 MB and no new threads; after "
                "the transient keys' TTLs, keys without a TTL are only the history (one record "
                "per rollout, the pipelines' records, the audit stream)"
            ),
            "met": bool(
                not lost
                and duplicated == 0
                and len(containers) <= KEEP_VERSIONS + 1
                and rss_growth < 5.0
                and thread_growth == 0
                and not kept_kinds
                and kept_records <= len(rollouts)
            ),
        },
    }


HISTORY_KINDS = {"rollout", "audit", "pipeline"}
"""Keys kept for good by design: rollout records, the pipelines' state, the audit stream."""
_FINAL = {s.value for s in botctl.SETTLED}


def store_status(rollouts: list[Any], rollout_id: str) -> str:
    found = [r for r in rollouts if r is not None and r["id"] == rollout_id]
    return str(found[0]["status"]) if found else "missing"


def name_label(rig: BenchRig) -> str:
    return rig.name("soak")


def _ack(slack: SignedSlackClient, command: str, text: str) -> str:
    reply = slack.command(command, text, user_id=botctl.DEPLOYER, channel_id=CHANNEL)
    if reply.status != 200:
        raise AssertionError(f"{command} {text}: HTTP {reply.status} {reply.text[:300]}")
    return reply.text
