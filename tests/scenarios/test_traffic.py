"""Deploys nobody notices, on the real stack: dockerd, HAProxy (driven by its runtime API),
Prometheus scraping HAProxy's exporter, Redis and the emulated Slack, each under a steady,
bounded loopback load through `traffic.listen` that records every response (issue 11)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from bot.domain.config import Traffic
from bot.domain.models import Rollout, RolloutKind, RolloutStatus
from bot.targets.docker_host import port_taken
from tests.scenarios.test_deploy_loop import deploy
from tests.support.bot_harness import CHANNEL, wait_until
from tests.support.load import LoadRecord, steady_load
from tests.support.services import HAProxyServer

pytestmark = [pytest.mark.docker, pytest.mark.prometheus, pytest.mark.slow]

RATE = 100.0  # requests/s through the proxy during each scenario


def start_served_bot(start_bot: Any, web: dict[str, Any], prometheus_server: Any) -> Any:
    return start_bot({"pipelines": {"web": web}}, prometheus_url=prometheus_server.url)


def listen_port(web: dict[str, Any]) -> int:
    return int(web["traffic"]["listen"].rsplit(":", 1)[1])


def rollout_of(
    bot: Any, version: str, done: Callable[[Rollout], bool], timeout: float = 40
) -> Rollout:
    def find() -> Rollout | None:
        rollouts: list[Rollout] = bot.ctx.store.recent_rollouts("web", 5)
        for rollout in rollouts:
            if rollout.version == version and done(rollout):
                return rollout
        return None

    try:
        result: Rollout = wait_until(find, timeout, what=f"a rollout of {version}")
    except AssertionError as exc:
        seen = [
            (
                r.version,
                r.status.value,
                r.error,
                r.notes,
                [(s.name, s.status.value, s.detail) for s in r.steps],
                [(x.slot, x.value, x.baseline, x.verdict) for x in bot.ctx.store.samples(r.id)],
            )
            for r in bot.ctx.store.recent_rollouts("web", 5)
        ]
        raise AssertionError(f"{exc}; rollouts: {seen}") from None
    return result


def is_(status: RolloutStatus) -> Callable[[Rollout], bool]:
    return lambda r: r.status is status


def first_good(bot: Any, timeout: float = 40) -> Rollout:
    deploy(bot, "web 1")
    return rollout_of(bot, "1", is_(RolloutStatus.good), timeout=timeout)


def posted(bot: Any, words: str, timeout: float = 15) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        # In the text or the blocks (the alert's timeline is a block).
        return next((m for m in bot.emulator.messages(CHANNEL) if words in json.dumps(m)), None)

    result: dict[str, Any] = wait_until(find, timeout, what=f"a message saying {words!r}")
    return result


def assert_nothing_lost(record: LoadRecord) -> None:
    lost = record.transport_failures()
    assert not lost, f"{record.summary()}; first lost: {lost[:3]}"


def containers_of_version(
    docker_client: Any, web: dict[str, Any], version: str, *, stopped_too: bool = False
) -> list[Any]:
    """The pipeline's containers of `version` (by the labels the bot gives them): running
    ones, or every one with `stopped_too`."""
    labels = [f"immune.container={web['container']['name']}", f"immune.version={version}"]
    return list(docker_client.containers.list(all=stopped_too, filters={"label": labels}))


def test_blue_green_deploy_and_a_rollback_during_the_watch_lose_no_request(
    start_bot: Any, served_web: Any, prometheus_server: Any
) -> None:
    web = served_web(strategy="blue_green")
    web["watch"]["duration"] = "20s"  # long enough to roll back during it
    bot = start_served_bot(start_bot, web, prometheus_server)
    first = first_good(bot, timeout=60)
    with steady_load("127.0.0.1", listen_port(web), rate=RATE, max_seconds=40) as load:
        time.sleep(1)
        deploy(bot, "web 2")
        live = rollout_of(bot, "2", is_(RolloutStatus.live))
        time.sleep(1.5)
        switched = time.monotonic()
        answer = bot.slack.command("/rollback", "web 1")
        assert answer.status == 200, answer.text
        back = rollout_of(bot, "1", lambda r: r.kind is RolloutKind.rollback and r.status.finished)
        time.sleep(1.5)
    record = load.record
    assert back.status is RolloutStatus.good, back.error
    assert_nothing_lost(record)
    assert not record.failures(), record.summary()
    assert "start" not in [s.name for s in back.steps], "the rollback only moved traffic"
    late = [r for r in record.responses if r.sent_at > switched + 0.5]
    assert late and all(r.version == "1" for r in late), record.summary()
    assert live.traffic is not None
    # The engine's label on 1's container, kept with the split: the way back read no record.
    assert live.traffic.baseline_reference == first.reference
    assert back.reference == first.reference
    print(f"blue/green deploy + rollback: {record.summary()}")


def test_a_canary_goes_to_100_percent_step_by_step_with_the_shares_it_promised(
    start_bot: Any, served_web: Any, prometheus_server: Any
) -> None:
    web = served_web(strategy="canary", steps=[10, 50, 100], step_duration="4s")
    bot = start_served_bot(start_bot, web, prometheus_server)
    first_good(bot)
    with steady_load("127.0.0.1", listen_port(web), rate=RATE, max_seconds=40) as load:
        time.sleep(1)
        deploy(bot, "web 2")
        canary = rollout_of(bot, "2", is_(RolloutStatus.live))
        assert canary.traffic is not None and canary.traffic.percent == 10
        good = rollout_of(bot, "2", is_(RolloutStatus.good), timeout=40)
        time.sleep(1)
    record = load.record
    assert_nothing_lost(record)
    assert not record.failures(), record.summary()
    assert good.live_at is not None
    live_at = good.live_at - time.time() + time.monotonic()  # wall clock to the load's clock
    for step, percent in enumerate([10, 50]):
        # The middle of each step, away from the edges where the split changes.
        window = record.between(live_at + step * 4 + 1, live_at + step * 4 + 3.5)
        share = 100 * record.share("2", window)
        assert abs(share - percent) <= 5, f"step {step + 1}: {share:.1f}% to 2, not {percent}%"
    print(f"canary to 100%: {record.summary()}")


def test_a_bad_version_caught_at_the_first_canary_step_hurt_only_its_share(
    start_bot: Any, served_web: Any, prometheus_server: Any, docker_client: Any
) -> None:
    web = served_web(strategy="canary", steps=[5, 50, 100], step_duration="60s")
    # No /metrics in any version: the watch judges them by the proxy's own counts alone.
    web["container"]["environment"] = {"DEMO_METRICS": "off"}
    bot = start_served_bot(start_bot, web, prometheus_server)
    first = first_good(bot)
    assert first.traffic is not None
    baseline = f"http://127.0.0.1:{first.traffic.port}"
    assert requests.get(f"{baseline}/metrics", timeout=5).status_code == 404
    with steady_load("127.0.0.1", listen_port(web), rate=2 * RATE, max_seconds=40) as load:
        time.sleep(1)
        started = time.monotonic()
        deploy(bot, "web 3")  # half its requests fail
        breached = rollout_of(bot, "3", is_(RolloutStatus.rolled_back), timeout=40)
        ended = time.monotonic()
        rollout_of(bot, "1", lambda r: r.kind is RolloutKind.auto_rollback and r.status.finished)
        time.sleep(1)
    record = load.record
    assert_nothing_lost(record)
    bad_period = record.between(started, ended)
    share = 100 * record.share("3", bad_period)
    assert 0 < share <= 10, f"the bad version had {share:.1f}% of requests, not about 5%"
    failed = record.failures()
    assert all(r.version == "3" for r in failed), "only the bad version's own 5xx"
    after = [r for r in record.responses if r.sent_at > ended + 0.5]
    assert after and all(r.version == "1" for r in after)
    assert requests.get(f"{baseline}/metrics", timeout=5).status_code == 404
    [bad] = containers_of_version(docker_client, web, "3", stopped_too=True)
    assert "DEMO_METRICS=off" in bad.attrs["Config"]["Env"], "3 ran without /metrics too"
    assert wait_until(lambda: bot.ctx.store.rollout(breached.id).incident_id, 10)
    posted(bot, "sent all traffic back to `1`; `3` had 5% of requests (step 1 of 3)")
    print(
        f"breach at 5%: {len(failed)} failed of {len(record.responses)}; "
        f"bad version share {share:.1f}% over {ended - started:.1f}s; {record.summary()}"
    )


def test_routes_lost_in_an_haproxy_restart_are_put_back_and_the_channel_told(
    start_bot: Any, served_web: Any, prometheus_server: Any, haproxy_server: HAProxyServer
) -> None:
    web = served_web(strategy="blue_green")
    bot = start_served_bot(start_bot, web, prometheus_server)
    first_good(bot)
    haproxy_server.restart()
    posted(bot, "had lost its routes")
    with steady_load("127.0.0.1", listen_port(web), rate=RATE, max_seconds=2) as load:
        time.sleep(2)
    assert_nothing_lost(load.record)
    assert load.record.share("1") == 1.0


def test_a_rollback_after_the_watch_starts_the_old_version_first_and_loses_nothing(
    start_bot: Any, served_web: Any, prometheus_server: Any, docker_client: Any
) -> None:
    web = served_web(strategy="blue_green")
    bot = start_served_bot(start_bot, web, prometheus_server)
    first_good(bot)
    deploy(bot, "web 2")
    second = rollout_of(bot, "2", is_(RolloutStatus.good))

    def version_1_stopped() -> bool:
        running = containers_of_version(docker_client, web, "1")
        return bot.ctx.store.rollout(second.id).traffic.baseline_retired and not running

    wait_until(version_1_stopped, 15, what="version 1 drained and stopped")
    with steady_load("127.0.0.1", listen_port(web), rate=RATE, max_seconds=30) as load:
        time.sleep(1)
        answer = bot.slack.command("/rollback", "web 1")
        assert answer.status == 200, answer.text
        back = rollout_of(bot, "1", lambda r: r.kind is RolloutKind.rollback and r.status.finished)
        switched = time.monotonic()
        time.sleep(1.5)
    record = load.record
    assert back.status is RolloutStatus.good, back.error
    assert [s.name for s in back.steps][:4] == ["locate image", "proxy", "start", "health check"]
    assert_nothing_lost(record)
    assert not record.failures(), record.summary()
    late = [r for r in record.responses if r.sent_at > switched]
    assert late and all(r.version == "1" for r in late), record.summary()
    print(f"rollback after the watch: {record.summary()}")


def test_a_version_that_fails_its_health_check_never_gets_a_request(
    start_bot: Any, served_web: Any, prometheus_server: Any
) -> None:
    web = served_web(strategy="blue_green")
    web["health"]["timeout"] = "2s"
    bot = start_served_bot(start_bot, web, prometheus_server)
    first_good(bot)
    with steady_load("127.0.0.1", listen_port(web), rate=RATE, max_seconds=20) as load:
        time.sleep(0.5)
        deploy(bot, "web 4")  # /healthz answers 500
        failed = rollout_of(bot, "4", lambda r: r.status.finished)
        time.sleep(0.5)
    record = load.record
    assert failed.status is RolloutStatus.failed
    assert "health check" in failed.error
    assert_nothing_lost(record)
    assert record.share("1") == 1.0, record.summary()
    print(f"unhealthy version: {record.summary()}")


class OtherProcessListening:
    """Something that is not immune listening on a version's port; counts what it accepts
    (a request the proxy sent it would be one)."""

    def __init__(self, port: int) -> None:
        self.accepted = 0
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # As servers do: a stopped version's connections may still linger there in TIME_WAIT.
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", port))
        self._socket.listen(8)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return  # closed
            self.accepted += 1
            connection.close()

    def __enter__(self) -> OtherProcessListening:
        return self

    def __exit__(self, *exc: object) -> None:
        self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        self._thread.join(timeout=5)


def test_a_port_another_process_holds_is_skipped_and_with_none_left_the_deploy_fails_unstarted(
    start_bot: Any, served_web: Any, prometheus_server: Any, docker_client: Any
) -> None:
    web = served_web(strategy="blue_green", ports=3)
    ports = Traffic.model_validate(web["traffic"]).ports.numbers()
    bot = start_served_bot(start_bot, web, prometheus_server)
    first = first_good(bot)
    assert first.traffic is not None
    one = first.traffic.port
    taken, free = [p for p in ports if p != one]
    with (
        OtherProcessListening(taken) as other,
        steady_load("127.0.0.1", listen_port(web), rate=RATE, max_seconds=40) as load,
    ):
        time.sleep(0.5)
        deploy(bot, "web 2")
        second = rollout_of(bot, "2", is_(RolloutStatus.good))
        wait_until(
            lambda: not containers_of_version(docker_client, web, "1"),
            15,
            what="version 1 drained and stopped",
        )
        assert not port_taken(one), "a stopped version's port is free again"
        with OtherProcessListening(one) as another:
            tried = time.monotonic()
            deploy(bot, "web 3")
            failed = rollout_of(bot, "3", lambda r: r.status.finished)
            time.sleep(0.5)
    record = load.record
    assert second.traffic is not None and second.traffic.port == free, "the taken port skipped"
    assert failed.status is RolloutStatus.failed
    assert "no free port in traffic.ports" in failed.error, failed.error
    assert "1 held by running versions, 2 taken by other processes" in failed.error, failed.error
    assert "widen traffic.ports" in failed.error, failed.error
    assert "start" not in [s.name for s in failed.steps], "nothing was started"
    posted(bot, "no free port in traffic.ports")
    assert_nothing_lost(record)
    assert not record.failures(), record.summary()
    after = [r for r in record.responses if r.sent_at > tried]
    assert after and all(r.version == "2" for r in after), "version 2 kept every request"
    assert other.accepted == 0 and another.accepted == 0, "the proxy never sent them a request"
    print(f"ports taken by another process: {record.summary()}")


def test_an_unreachable_runtime_api_fails_the_deploy_before_anything_starts(
    start_bot: Any, served_web: Any, prometheus_server: Any, haproxy_server: HAProxyServer
) -> None:
    web = served_web(strategy="blue_green")
    bot = start_served_bot(start_bot, web, prometheus_server)
    first_good(bot)
    # HAProxy keeps serving; only its runtime API socket is gone.
    Path(haproxy_server.runtime_api).unlink()
    with steady_load("127.0.0.1", listen_port(web), rate=RATE, max_seconds=20) as load:
        time.sleep(0.5)
        deploy(bot, "web 2")
        failed = rollout_of(bot, "2", lambda r: r.status.finished)
        time.sleep(0.5)
    assert failed.status is RolloutStatus.failed
    assert "nothing was started and no traffic moved" in failed.error, failed.error
    assert [s.name for s in failed.steps] == ["locate image", "proxy"]
    assert_nothing_lost(load.record)
    assert load.record.share("1") == 1.0
    health = requests.get(bot.url + "/healthz", timeout=5).json()
    [proxy] = [value for key, value in health.items() if key.startswith("haproxy ")]
    assert proxy["ok"] is False, proxy


def stored_rollout(redis_client: Any, prefix: str, version: str) -> dict[str, Any] | None:
    for rollout_id in redis_client.zrevrange(f"{prefix}:pipeline:web:rollouts", 0, 5):
        rollout: dict[str, Any] = json.loads(redis_client.get(f"{prefix}:rollout:{rollout_id}"))
        if rollout["version"] == version:
            return rollout
    return None


def test_a_bot_killed_mid_canary_carries_on_from_redis_when_started_again(
    start_bot_process: Any,
    served_web: Any,
    prometheus_server: Any,
    redis_client: Any,
    redis_prefix: str,
) -> None:
    web = served_web(strategy="canary", steps=[10, 50, 100], step_duration="3s")
    bot = start_bot_process({"pipelines": {"web": web}}, prometheus_url=prometheus_server.url)

    def status(version: str) -> str:
        rollout = stored_rollout(redis_client, redis_prefix, version)
        return rollout["status"] if rollout else ""

    bot.slack.command("/deploy", "web 1")
    wait_until(lambda: status("1") == "good", 40, what="version 1 good")
    with steady_load("127.0.0.1", listen_port(web), rate=RATE, max_seconds=40) as load:
        time.sleep(0.5)
        bot.slack.command("/deploy", "web 2")
        wait_until(lambda: status("2") == "live", 30, what="the canary at its first step")
        bot.kill()
        time.sleep(2)  # no bot: the split stays as Redis recorded it
        bot.start()
        wait_until(lambda: status("2") == "good", 40, what="the canary to finish after restart")
        wait_until(
            lambda: stored_rollout(redis_client, redis_prefix, "2")["traffic"]["baseline_retired"],  # type: ignore[index]
            10,
            what=f"version 1 drained; bot log:\n{bot.log_tail(60)}",
        )
        ended = time.monotonic()
        time.sleep(1)
    record = load.record
    assert_nothing_lost(record)
    assert not record.failures(), record.summary()
    late = [r for r in record.responses if r.sent_at > ended]
    assert late and all(r.version == "2" for r in late), record.summary()
    assert stored_rollout(redis_client, redis_prefix, "2")["traffic"]["percent"] == 100  # type: ignore[index]
    print(f"bot killed mid-canary: {record.summary()}")
