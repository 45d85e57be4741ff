"""Bot replicas sharing the work: several `python -m bot` processes against one Redis.

Any replica takes a Slack request; each KPI poll, rollout step and breach alert happens once;
a replica killed with SIGKILL (its watch polls, or the rollout it runs) is taken over by
another. Polls are counted from the samples list (one sample per KPI per poll slot) and from
the poll-slot claims, which name the replica that ran each slot.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import pytest
import requests

from tests.support.bot_harness import BotProcess, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.prometheus, pytest.mark.slow]

INTERVAL = 1.0


def kpis(label: str) -> list[dict[str, Any]]:
    selector = f'pipeline="{label}"'
    return [
        {
            "name": "error_rate",
            "query": (
                f'sum(rate(http_requests_total{{{selector},code=~"5.."}}[3s]))'
                f" / sum(rate(http_requests_total{{{selector}}}[3s]))"
            ),
            "max": 0.1,
            "for": 2,
        },
        {
            "name": "traffic",
            "query": f"sum(rate(http_requests_total{{{selector}}}[3s]))",
            "min": 1,
            "for": 2,
        },
    ]


@pytest.fixture
def watched(web_pipeline: Any, prometheus_server: Any, unique_name: str) -> Any:
    def make(duration: str) -> dict[str, Any]:
        web: dict[str, Any] = web_pipeline(
            watch={"interval": f"{INTERVAL:g}s", "duration": duration, "warmup": 2},
            kpis=kpis(unique_name),
        )
        port = web["container"]["environment"]["PORT"]
        prometheus_server.set_targets({"pipeline": unique_name}, [f"127.0.0.1:{port}"])
        prometheus_server.wait_for_series(f'up{{pipeline="{unique_name}"}}', timeout=20)
        return web

    return make


class Cluster:
    """The replicas of one test and what they share in Redis."""

    def __init__(self, redis_client: Any, prefix: str) -> None:
        self.redis = redis_client
        self.prefix = prefix
        self.replicas: dict[str, BotProcess] = {}  # instance id -> process

    def add(self, process: BotProcess) -> str:
        instance = requests.get(process.url + "/healthz", timeout=5).json()["instance"]
        self.replicas[instance] = process
        return str(instance)

    def rollouts(self) -> list[dict[str, Any]]:
        ids = self.redis.zrange(f"{self.prefix}:pipeline:web:rollouts", 0, -1)
        return [json.loads(self.redis.get(f"{self.prefix}:rollout:{i}")) for i in ids]

    def rollout(self, version: str, kind: str = "deploy") -> dict[str, Any] | None:
        found = [r for r in self.rollouts() if r["version"] == version and r["kind"] == kind]
        return found[-1] if found else None

    def samples(self, rollout_id: str) -> list[dict[str, Any]]:
        raw = self.redis.lrange(f"{self.prefix}:rollout:{rollout_id}:samples", 0, -1)
        return [json.loads(item) for item in raw]

    def poll_owner(self, rollout_id: str, slot: int) -> str | None:
        owner = self.redis.get(f"{self.prefix}:poll:{rollout_id}:{slot}")
        return str(owner) if owner else None

    def audit(self) -> list[dict[str, str]]:
        return [fields for _, fields in self.redis.xrange(f"{self.prefix}:audit")]

    def status(self, version: str, kind: str = "deploy") -> str:
        rollout = self.rollout(version, kind)
        return rollout["status"] if rollout else ""


def kill_the_latest_poller(
    cluster: Cluster, rollout_id: str, kpi_count: int
) -> tuple[str, int, float]:
    """Wait for a slot fully polled, kill the replica that polled it; (instance, slot, when)."""

    def completed_slot() -> tuple[str, int] | None:
        samples = cluster.samples(rollout_id)
        if not samples:
            return None
        slot = max(s["slot"] for s in samples)
        if sum(1 for s in samples if s["slot"] == slot) < kpi_count:
            return None
        owner = cluster.poll_owner(rollout_id, slot)
        alive = owner in cluster.replicas and cluster.replicas[owner].process is not None
        return (owner, slot) if alive and owner else None

    previous = max((s["slot"] for s in cluster.samples(rollout_id)), default=0)
    owner, slot = wait_until(
        lambda: (found := completed_slot()) and found[1] > previous and found,
        10,
        interval=0.01,
        what="a completed poll",
    )
    cluster.replicas.pop(owner).kill()
    return owner, slot, time.time()


def test_replicas_poll_each_slot_once_and_take_over_a_killed_poller(
    start_bot_process: Any,
    watched: Any,
    prometheus_server: Any,
    redis_client: Any,
    redis_prefix: str,
    emulator: Any,
) -> None:
    web = watched("14s")
    config = {"pipelines": {"web": web}}
    cluster = Cluster(redis_client, redis_prefix)
    first, second, third = (
        start_bot_process(config, prometheus_url=prometheus_server.url) for _ in range(3)
    )
    for process in (first, second, third):
        cluster.add(process)

    # Any replica takes a Slack request: deploy through the second, ask the third.
    assert "Deploying" in second.slack.command("/deploy", "web 1").json()["text"]
    live = wait_until(
        lambda: cluster.status("1") == "live" and cluster.rollout("1"), 20, what="1 live"
    )
    status = third.slack.command("/pipeline", "web").json()["text"]
    assert "live: `1`" in status
    steps = [s["name"] for s in live["steps"]]
    assert steps == ["locate image", "start", "health check"], "each rollout step ran once"

    # Kill the replica that ran the latest poll, twice: one survivor finishes the watch.
    failovers = []
    for _ in range(2):
        owner, slot, killed_at = kill_the_latest_poller(cluster, live["id"], 2)
        next_poll = wait_until(
            lambda slot=slot: [s for s in cluster.samples(live["id"]) if s["slot"] > slot],
            3 * INTERVAL,
            interval=0.01,
            what=f"a poll after slot {slot} by a survivor",
        )
        taker = cluster.poll_owner(live["id"], next_poll[0]["slot"])
        assert taker != owner and taker in cluster.replicas
        failovers.append(min(s["at"] for s in next_poll) - killed_at)
    assert all(seconds < 2 * INTERVAL for seconds in failovers), failovers

    good = wait_until(
        lambda: cluster.status("1") == "good" and cluster.rollout("1"), 30, what="1 good"
    )
    samples = cluster.samples(good["id"])
    per_slot = Counter((s["slot"], s["kpi"]) for s in samples)
    last_slot = 14
    assert set(per_slot) == {
        (slot, kpi) for slot in range(1, last_slot + 1) for kpi in ("error_rate", "traffic")
    }
    assert set(per_slot.values()) == {1}, "one sample per KPI per slot: no poll lost, none doubled"
    owners = Counter(cluster.poll_owner(good["id"], slot) for slot in range(1, last_slot + 1))
    assert len(owners) >= 2, f"the polls were shared: {owners}"
    assert sum(owners.values()) == last_slot

    # A breach with two replicas alive: one rollback, one halt, one incident, one alert.
    replacement = start_bot_process(config, prometheus_url=prometheus_server.url)
    cluster.add(replacement)
    assert len(cluster.replicas) == 2
    emulator.clear()
    assert "Deploying" in replacement.slack.command("/deploy", "web 3").json()["text"]
    wait_until(lambda: cluster.status("3") == "rolled_back", 40, what="the breach of 3")
    wait_until(lambda: cluster.status("1", "auto_rollback") == "good", 30, what="the rollback to 1")
    time.sleep(3 * INTERVAL)  # every replica had its chance to act on the breach again
    audit = cluster.audit()
    assert sum(1 for a in audit if a["action"] == "breach") == 1
    assert sum(1 for a in audit if a["action"] == "auto_rollback") == 1
    assert sum(1 for a in audit if a["action"] == "halt") == 1
    assert len([r for r in cluster.rollouts() if r["kind"] == "auto_rollback"]) == 1
    alerts = [
        c
        for c in emulator.calls("chat.postMessage")
        if str(c.body.get("text", "")).startswith("KPI breach on web")
    ]
    assert len(alerts) == 1, "the alert went out once"
    assert redis_client.hget(f"{redis_prefix}:pipeline:web", "status") == "halted"
    print(
        "\nreplica running the latest poll killed → next poll by a survivor: "
        + ", ".join(f"{seconds:.2f}s" for seconds in failovers)
        + f" (interval {INTERVAL:g}s); polls per replica {dict(owners)}"
    )


def test_a_slack_retry_to_another_replica_is_handled_once(
    start_bot_process: Any, web_pipeline: Any, redis_client: Any, redis_prefix: str
) -> None:
    config = {"pipelines": {"web": web_pipeline()}}
    replicas = [start_bot_process(config) for _ in range(2)]
    cluster = Cluster(redis_client, redis_prefix)
    trigger = replicas[0].slack.new_trigger_id()
    answers: list[Any] = []

    def send(process: BotProcess, retry: int | None) -> None:
        answers.append(
            process.slack.command("/deploy", "web 1", trigger_id=trigger, retry_num=retry)
        )

    # Slack redelivers a slow request; the retry may reach any replica, even at the same time.
    threads = [
        threading.Thread(target=send, args=(p, r)) for p, r in zip(replicas, (None, 1), strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert [a.status for a in answers] == [200, 200]
    wait_until(lambda: cluster.status("1") == "good", 20, what="1 good")
    time.sleep(1)
    assert len(cluster.rollouts()) == 1, "one rollout for one request"
    accepted = [
        a for a in cluster.audit() if a["action"] == "deploy" and a["outcome"] == "accepted"
    ]
    assert len(accepted) == 1


def test_a_rollout_whose_replica_died_is_finished_once_by_another(
    start_bot_process: Any, web_pipeline: Any, redis_client: Any, redis_prefix: str
) -> None:
    web = web_pipeline()
    web["health"]["timeout"] = "8s"
    config = {"pipelines": {"web": web}}
    cluster = Cluster(redis_client, redis_prefix)
    for _ in range(3):
        cluster.add(start_bot_process(config))
    any_replica = next(iter(cluster.replicas.values()))
    any_replica.slack.command("/deploy", "web 1")
    wait_until(lambda: cluster.status("1") == "good", 20, what="1 good")

    any_replica.slack.command("/deploy", "web 4")  # never healthy: 8 s of health checks
    rollout = wait_until(
        lambda: (
            (r := cluster.rollout("4"))
            and any(s["name"] == "health check" and s["ended_at"] is None for s in r["steps"])
            and r
        ),
        15,
        what="the health check of 4",
    )
    runner = redis_client.get(f"{redis_prefix}:runner:{rollout['id']}")
    cluster.replicas.pop(runner).kill()
    killed_at = time.monotonic()

    ended = wait_until(
        lambda: cluster.status("4") not in ("queued", "in_flight") and cluster.rollout("4"),
        40,
        what="the takeover",
    )
    took = time.monotonic() - killed_at
    assert ended["status"] == "failed" and "bot restarted mid-rollout" in ended["error"]
    adopted = [
        a for a in cluster.audit() if a["action"] == "recover" and a["rollout"] == rollout["id"]
    ]
    assert len(adopted) == 1, "exactly one replica adopted it"
    assert adopted[0]["detail"].removeprefix("by ") in cluster.replicas
    finished = [
        a
        for a in cluster.audit()
        if a["action"] == "deploy.failed" and a["rollout"] == rollout["id"]
    ]
    assert len(finished) == 1, "it ended once"
    assert redis_client.hget(f"{redis_prefix}:pipeline:web", "live_version") == "1"
    print(f"\nrollout runner killed → adopted and undone by another replica in {took:.1f}s")
