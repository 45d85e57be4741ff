"""A bot killed mid-rollout and started again reconciles with what the engine really runs."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.scenarios.test_deploy_loop import serving_version
from tests.support.bot_harness import CHANNEL, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def rollout_of(redis_client: Any, prefix: str, version: str) -> dict[str, Any] | None:
    for rollout_id in redis_client.zrevrange(f"{prefix}:pipeline:web:rollouts", 0, 5):
        rollout = json.loads(redis_client.get(f"{prefix}:rollout:{rollout_id}"))
        if rollout["version"] == version:
            return dict(rollout)
    return None


def step_running(redis_client: Any, prefix: str, version: str, step: str) -> bool:
    rollout = rollout_of(redis_client, prefix, version)
    return bool(
        rollout and any(s["name"] == step and s["ended_at"] is None for s in rollout["steps"])
    )


def ended(redis_client: Any, prefix: str, version: str) -> dict[str, Any] | None:
    rollout = rollout_of(redis_client, prefix, version)
    if rollout and rollout["status"] not in ("queued", "in_flight", "awaiting_approval"):
        return rollout
    return None


@pytest.mark.parametrize(
    ("version", "outcome"),
    [("4", "failed"), ("2", "good")],
    ids=["new-version-unhealthy-is-undone", "new-version-healthy-is-finished"],
)
def test_killed_mid_health_check(
    start_bot_process: Any,
    web_pipeline: Any,
    redis_client: Any,
    redis_prefix: str,
    emulator: Any,
    version: str,
    outcome: str,
) -> None:
    web = web_pipeline()
    # Every version takes 3 s to answer, so the bot can be killed during the health check.
    web["container"]["environment"]["DEMO_START_DELAY"] = "3"
    web["health"]["timeout"] = "8s"
    bot = start_bot_process({"pipelines": {"web": web}})
    assert "Deploying" in bot.slack.command("/deploy", "web 1").json()["text"]
    wait_until(lambda: ended(redis_client, redis_prefix, "1"), 30, what="version 1 live")
    assert serving_version(web) == "1"

    bot.slack.command("/deploy", f"web {version}")
    wait_until(
        lambda: step_running(redis_client, redis_prefix, version, "health check"),
        15,
        what="health check",
    )
    bot.kill()
    killed_at = time.monotonic()
    assert ended(redis_client, redis_prefix, version) is None, "killed while in flight"

    bot.start()
    result = wait_until(lambda: ended(redis_client, redis_prefix, version), 40, what="recovery")
    recovered_in = time.monotonic() - killed_at
    assert result["status"] == outcome
    state = redis_client.hgetall(f"{redis_prefix}:pipeline:web")
    assert state["inflight_rollout"] == ""
    if outcome == "good":
        assert serving_version(web) == "2"
        assert state["live_version"] == "2"
        assert "bot restarted mid-rollout; finished it" in result["notes"]
    else:
        assert serving_version(web) == "1"
        assert state["live_version"] == "1"
        assert "bot restarted mid-rollout" in result["error"]
    # The channel was told: the rollout's one message shows the outcome.
    message = next(m for m in emulator.messages(CHANNEL) if m["ts"] == result["message_ts"])
    assert ("live and good" if outcome == "good" else "failed") in message["text"]
    audit = redis_client.xrange(f"{redis_prefix}:audit")
    assert any(
        fields["action"] == "recover" and fields["rollout"] == result["id"] for _, fields in audit
    )
    print(f"\nkilled mid-rollout → {outcome} after restart: {recovered_in:.1f}s (lock TTL 3 s)")
