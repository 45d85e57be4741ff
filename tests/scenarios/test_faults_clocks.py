"""Replicas whose clocks disagree by ±2 s (issue 15, clocks).

Three `python -m bot` replicas share one Redis: one on the system clock, one 2 s ahead, one
2 s behind (`tests.support.skewed_bot` shifts the bot's one time seam, its `Clock`). Whatever
a replica's clock says, each poll slot runs once, an orphaned rollout is adopted once and an
approval request expires once: every one of those is a claim in Redis (a SET NX, a lock's
TTL counted by Redis, or one WATCH/MULTI change of the rollout), never a comparison of two
hosts' clocks. What skew does move is *when*: the replica ahead polls a slot and expires a
request up to its skew early. That is the documented answer (README, "What happens when…").
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from tests.scenarios.test_replicas import INTERVAL, Cluster, kpis
from tests.support.bot_harness import wait_until
from tests.support.policy import DEV, LEAD

pytestmark = [pytest.mark.docker, pytest.mark.prometheus, pytest.mark.slow]

SKEWS = (0.0, 2.0, -2.0)  # seconds each replica's clock is off


@pytest.fixture
def watched_web(web_pipeline: Any, prometheus_server: Any, unique_name: str) -> dict[str, Any]:
    """`web` watched for 10 polls of its two KPIs, its container scraped by Prometheus."""
    web: dict[str, Any] = web_pipeline(
        watch={"interval": f"{INTERVAL:g}s", "duration": "10s", "warmup": 2},
        kpis=kpis(unique_name),
    )
    port = web["container"]["environment"]["PORT"]
    prometheus_server.set_targets({"pipeline": unique_name}, [f"127.0.0.1:{port}"])
    prometheus_server.wait_for_series(f'up{{pipeline="{unique_name}"}}', timeout=20)
    return web


def skewed_cluster(
    start_bot_process: Any, config: dict[str, Any], redis_client: Any, prefix: str, **settings: Any
) -> Cluster:
    cluster = Cluster(redis_client, prefix)
    for skew in SKEWS:
        cluster.add(start_bot_process(config, clock_offset=skew, **settings))
    return cluster


def test_skewed_replicas_poll_each_slot_once(
    start_bot_process: Any,
    watched_web: dict[str, Any],
    prometheus_server: Any,
    redis_client: Any,
    redis_prefix: str,
) -> None:
    cluster = skewed_cluster(
        start_bot_process,
        {"pipelines": {"web": watched_web}},
        redis_client,
        redis_prefix,
        prometheus_url=prometheus_server.url,
    )
    # Deploy through the replica that is behind, so the watch's slots are counted from a
    # start 2 s in the past by the others' clocks.
    behind = list(cluster.replicas.values())[2]
    assert "Deploying" in behind.slack.command("/deploy", "web 1").json()["text"]
    good = wait_until(
        lambda: cluster.status("1") == "good" and cluster.rollout("1"), 40, what="1 good"
    )
    time.sleep(3)  # every replica had its chance to poll a slot again, or to end it again
    samples = cluster.samples(good["id"])
    per_slot = Counter((s["slot"], s["kpi"]) for s in samples)
    assert set(per_slot.values()) == {1}, f"a slot polled twice: {per_slot}"
    slots = sorted({slot for slot, _ in per_slot})
    assert slots and slots[-1] == 10, slots
    assert all(per_slot[(slot, kpi)] == 1 for slot in slots for kpi in ("error_rate", "traffic"))
    owners = Counter(cluster.poll_owner(good["id"], slot) for slot in slots)
    assert set(owners) <= set(cluster.replicas), owners
    ended = [
        a for a in cluster.audit() if a["rollout"] == good["id"] and a["action"] == "watch.good"
    ]
    assert len(ended) == 1, "the watch ended once"
    print(f"\nslots polled {slots} (of 1-10); by replica {dict(owners)}")


def test_skewed_replicas_adopt_an_orphaned_rollout_once(
    start_bot_process: Any, web_pipeline: Any, redis_client: Any, redis_prefix: str
) -> None:
    web = web_pipeline()
    web["health"]["timeout"] = "8s"
    cluster = skewed_cluster(
        start_bot_process, {"pipelines": {"web": web}}, redis_client, redis_prefix
    )
    first = next(iter(cluster.replicas.values()))
    first.slack.command("/deploy", "web 1")
    wait_until(lambda: cluster.status("1") == "good", 20, what="1 good")

    first.slack.command("/deploy", "web 4")  # never healthy: 8 s of health checks
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
    ended = wait_until(
        lambda: cluster.status("4") not in ("queued", "in_flight") and cluster.rollout("4"),
        40,
        what="the takeover",
    )
    time.sleep(3)  # the survivors' recovery passes ran again
    assert ended["status"] == "failed" and "bot restarted mid-rollout" in ended["error"]
    audit = cluster.audit()
    adopted = [a for a in audit if a["action"] == "recover" and a["rollout"] == rollout["id"]]
    assert len(adopted) == 1, "exactly one replica adopted it"
    failed = [a for a in audit if a["action"] == "deploy.failed" and a["rollout"] == rollout["id"]]
    assert len(failed) == 1, "it ended once"
    assert redis_client.hget(f"{redis_prefix}:pipeline:web", "live_version") == "1"


def test_skewed_replicas_expire_an_approval_request_once(
    start_bot_process: Any,
    web_pipeline: Any,
    redis_client: Any,
    redis_prefix: str,
    emulator: Any,
) -> None:
    web = web_pipeline(approvals={"approvers": [LEAD], "expire": "8s"}, deployers=[DEV])
    cluster = skewed_cluster(
        start_bot_process, {"pipelines": {"web": web}}, redis_client, redis_prefix
    )
    behind = list(cluster.replicas.values())[2]
    reply = behind.slack.command("/deploy", "web 1", user_id=DEV).json()["text"]
    assert "needs approval" in reply, reply
    request = wait_until(lambda: cluster.rollout("1"), 5, what="the request")
    asked_at = time.time()
    wait_until(lambda: cluster.status("1") == "expired", 20, what="the request to expire")
    expired_after = time.time() - asked_at
    time.sleep(4)  # the replicas on the system clock and behind it reach its expiry too
    expired = [
        a
        for a in cluster.audit()
        if a["action"] == "deploy.expired" and a["rollout"] == request["id"]
    ]
    assert len(expired) == 1, expired
    told = [e for e in emulator.ephemerals() if "expired without enough approvals" in e["text"]]
    assert len(told) == 1, told
    # Asked on the replica 2 s behind, so the one 2 s ahead finds it due 4 s early: no earlier.
    assert expired_after >= 8 - 4 - 0.5, expired_after
    print(f"\nrequest of 8s asked on the replica 2s behind expired after {expired_after:.1f}s")
