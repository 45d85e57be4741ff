"""The immune system: KPI watches against a real Prometheus, breach → rollback → halt."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from bot.domain.models import RolloutKind, RolloutStatus
from bot.services.incidents import load_incident
from tests.scenarios.test_deploy_loop import deploy, finished, serving_version
from tests.support.bot_harness import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.prometheus]


def error_rate_kpi(label: str, **fields: Any) -> dict[str, Any]:
    selector = f'pipeline="{label}"'
    return {
        "name": "error_rate",
        "query": (
            f'sum(rate(http_requests_total{{{selector},code=~"5.."}}[3s]))'
            f" / sum(rate(http_requests_total{{{selector}}}[3s]))"
        ),
        "max": 0.1,
        "for": 2,
        **fields,
    }


@pytest.fixture
def watched_web(web_pipeline: Any, prometheus_server: Any, unique_name: str) -> Any:
    """A pipeline watched through the session's Prometheus, which scrapes its port."""

    def make(*, duration: str = "5s", warmup: int = 3, **kpi_fields: Any) -> dict[str, Any]:
        web: dict[str, Any] = web_pipeline(
            watch={"interval": "1s", "duration": duration, "warmup": warmup},
            kpis=[error_rate_kpi(unique_name, **kpi_fields)],
        )
        port = web["container"]["environment"]["PORT"]
        prometheus_server.set_targets({"pipeline": unique_name}, [f"127.0.0.1:{port}"])
        # Prometheus applies discovered targets at most every 5 s: wait until it scrapes ours.
        prometheus_server.wait_for_series(f'up{{pipeline="{unique_name}"}}', timeout=20)
        return web

    return make


def watched_rollout_ended(bot: Any, version: str, timeout: float = 40) -> Any:
    def ended() -> Any:
        newest = [r for r in bot.ctx.store.recent_rollouts("web", 5) if r.version == version]
        if (
            newest
            and newest[0].status not in (RolloutStatus.live,)
            and not newest[0].status.in_flight_states
            # A breach is handled once its incident is recorded (the halt comes before it).
            and (newest[0].status is not RolloutStatus.rolled_back or newest[0].incident_id)
        ):
            return newest[0]
        return None

    return wait_until(ended, timeout, what=f"the watch of {version} to end")


def test_good_version_passes_its_watch_and_becomes_last_good(
    start_bot: Any, watched_web: Any, prometheus_server: Any
) -> None:
    web = watched_web(duration="5s")
    bot = start_bot({"pipelines": {"web": web}}, prometheus_url=prometheus_server.url)
    deploy(bot, "web 1")
    live = finished(bot, "web", "1")
    assert live.status is RolloutStatus.live
    assert bot.ctx.store.pipeline("web").last_good_version == ""  # not before its watch ends
    good = watched_rollout_ended(bot, "1")
    assert good.status is RolloutStatus.good, bot.immune.watcher.samples(good.id)
    assert bot.ctx.store.pipeline("web").last_good_version == "1"
    samples = bot.immune.watcher.samples(good.id)
    slots = [s.slot for s in samples]
    assert slots == sorted(set(slots)), "each poll slot ran once, in order"
    assert slots[-1] == 5
    verdicts = Counter(s.verdict for s in samples)
    assert verdicts["warmup"] == 3 and verdicts["ok"] >= 1 and verdicts["breach"] == 0
    assert all(s.value == 0 for s in samples if s.verdict == "ok")
    assert bot.immune.ctx.store.watches() == {}


def test_bad_version_is_rolled_back_and_the_pipeline_halted(
    start_bot: Any, watched_web: Any, prometheus_server: Any
) -> None:
    web = watched_web(duration="8s")
    bot = start_bot({"pipelines": {"web": web}}, prometheus_url=prometheus_server.url)
    deploy(bot, "web 1")
    assert watched_rollout_ended(bot, "1").status is RolloutStatus.good

    deploy(bot, "web 3")  # 50% of requests fail
    bad = finished(bot, "web", "3")
    assert bad.status is RolloutStatus.live
    breached = watched_rollout_ended(bot, "3", timeout=30)
    assert breached.status is RolloutStatus.rolled_back
    assert breached.incident_id

    restore = wait_until(
        lambda: next(
            (
                r
                for r in bot.ctx.store.recent_rollouts("web", 3)
                if r.kind is RolloutKind.auto_rollback and not r.status.in_flight_states
            ),
            None,
        ),
        20,
        what="the automatic rollback to end",
    )
    assert restore.version == "1" and restore.status is RolloutStatus.good
    assert restore.requested_by == "immune"
    assert serving_version(web) == "1"

    state = bot.ctx.store.pipeline("web")
    assert state.halted and state.halted_reason == "KPI breach" and state.halted_by == "immune"
    assert (state.live_version, state.last_good_version) == ("1", "1")
    incident = load_incident(bot.ctx.store, breached.incident_id)
    assert incident.bad_version == "3" and incident.restored_version == "1"
    assert incident.kpi == "error_rate" and incident.tolerance == "error_rate ≤ 0.1"
    assert incident.rollback_rollout_id == restore.id
    breaching = [s for s in incident.samples if s.verdict == "breach"]
    assert len(breaching) >= 2 and all(s.value is not None and s.value > 0.1 for s in breaching)

    # Halted: the next deploy is refused with who, when and why.
    refusal = deploy(bot, "web 2")
    assert "halted by immune since" in refusal and "KPI breach" in refusal

    detection = restore.created_at - (breached.live_at or 0)
    first_breach = min(s.at for s in breaching)
    rollback = (restore.live_at or 0) - restore.created_at
    print(
        f"\nbreach: live→rollback start {detection:.2f}s (first breaching poll → rollback start "
        f"{restore.created_at - first_breach:.2f}s; interval 1s, for 2, warmup 3), "
        f"rollback start→serving {rollback:.2f}s"
    )


@pytest.mark.parametrize("policy", ["breach", "ignore"])
def test_prometheus_stopped_mid_watch_follows_the_no_data_policy(
    start_bot: Any, watched_web: Any, prometheus_server: Any, policy: str
) -> None:
    web = watched_web(duration="8s", warmup=2, no_data=policy)
    bot = start_bot({"pipelines": {"web": web}}, prometheus_url=prometheus_server.url)
    bot.ctx.store.update_pipeline("web", last_good_version="0")  # no rollback target needed
    deploy(bot, "web 1")
    live = finished(bot, "web", "1")
    wait_until(
        lambda: any(s.verdict == "ok" for s in bot.immune.watcher.samples(live.id)),
        15,
        what="a healthy poll",
    )
    prometheus_server.stop()
    ended = watched_rollout_ended(bot, "1", timeout=30)
    samples = bot.immune.watcher.samples(live.id)
    no_data = [s for s in samples if s.value is None and s.verdict not in ("warmup",)]
    assert no_data and all("unreachable" in s.detail for s in no_data)
    if policy == "breach":
        assert ended.status is RolloutStatus.rolled_back
        assert bot.ctx.store.pipeline("web").halted
        assert {s.verdict for s in no_data} == {"no_data"}
    else:
        assert ended.status is RolloutStatus.good
        assert not bot.ctx.store.pipeline("web").halted
        assert {s.verdict for s in no_data} == {"ignored"}


@pytest.mark.slow
def test_a_restarted_bot_carries_on_the_watch(
    start_bot_process: Any,
    watched_web: Any,
    prometheus_server: Any,
    redis_client: Any,
    redis_prefix: str,
) -> None:
    web = watched_web(duration="12s", warmup=2)
    bot = start_bot_process({"pipelines": {"web": web}}, prometheus_url=prometheus_server.url)
    assert "Deploying" in bot.slack.command("/deploy", "web 1").json()["text"]
    watches_key = f"{redis_prefix}:watches"
    rollout_id = wait_until(lambda: redis_client.hkeys(watches_key), 15, what="the watch to start")[
        0
    ]
    samples_key = f"{redis_prefix}:rollout:{rollout_id}:samples"
    wait_until(lambda: redis_client.llen(samples_key) >= 3, 15, what="three polls")
    bot.kill()
    killed_at = time.time()
    time.sleep(2)
    bot.start()
    wait_until(
        lambda: not redis_client.hexists(watches_key, rollout_id), 30, what="the watch to end"
    )

    import json

    samples = [json.loads(raw) for raw in redis_client.lrange(samples_key, 0, -1)]
    slots = [s["slot"] for s in samples]
    assert len(slots) == len(set(slots)), f"no poll ran twice: {slots}"
    after = [s for s in samples if s["at"] > killed_at]
    assert after, "the restarted bot polled"
    assert max(slots) == 12
    rollout = json.loads(redis_client.get(f"{redis_prefix}:rollout:{rollout_id}"))
    assert rollout["status"] == "good"
    assert redis_client.hget(f"{redis_prefix}:pipeline:web", "last_good_version") == "1"
