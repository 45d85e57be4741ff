"""The test gate: the new image's own tests, in a throwaway container, before the swap.

Demo tag 1's /tests/run passes; tag 6's fails ("FAIL: test_checkout expected 200 got 500").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import docker
import pytest

from bot.domain.models import Rollout, RolloutStatus, StepStatus
from tests.scenarios.test_deploy_loop import serving_version
from tests.support.bot_harness import CHANNEL, InProcessBot
from tests.support.policy import DEV, answer, config, rollout_id_in, wait_finished
from tests.support.slack_emulator import SlackEmulator

pytestmark = pytest.mark.docker

StartBot = Callable[..., InProcessBot]
IMAGE_TESTS = {"command": ["/bin/sh", "/tests/run"], "timeout": "60s"}


def deploy(bot: InProcessBot, name: str, version: str) -> Rollout:
    reply = answer(bot.slack.command("/deploy", f"{name} {version}", user_id=DEV))
    assert reply.startswith("Deploying"), reply
    return wait_finished(bot, rollout_id_in(reply), timeout=90)


def gate_containers(docker_client: docker.DockerClient, rollout_id: str) -> list[Any]:
    return list(
        docker_client.containers.list(
            all=True, filters={"label": [f"immune.rollout={rollout_id}", "immune.role=test"]}
        )
    )


def service_versions(docker_client: docker.DockerClient, name: str) -> dict[str, str]:
    found = docker_client.containers.list(
        all=True, filters={"label": [f"immune.pipeline={name}", "immune.role=service"]}
    )
    return {c.labels["immune.version"]: c.status for c in found}


def test_passing_tests_let_the_rollout_go_on_failing_ones_stop_it(
    start_bot: StartBot,
    web_pipeline: Any,
    unique_name: str,
    emulator: SlackEmulator,
    docker_client: docker.DockerClient,
) -> None:
    name = unique_name
    web = web_pipeline(tests=IMAGE_TESTS)
    bot = start_bot(config(name, web))

    good = deploy(bot, name, "1")
    assert good.status is RolloutStatus.good, good.error
    gate = good.step("test gate")
    assert gate is not None and gate.status is StepStatus.done
    assert [s.name for s in good.steps].index("test gate") < [s.name for s in good.steps].index(
        "start"
    )
    assert serving_version(web) == "1"

    bad = deploy(bot, name, "6")
    assert bad.status is RolloutStatus.failed
    assert bad.error == "tests failed (exit code 1)"
    assert "FAIL: test_checkout expected 200 got 500" in bad.logs_tail
    assert "1 passed, 1 failed" in bad.logs_tail
    gate = bad.step("test gate")
    assert gate is not None and gate.status is StepStatus.failed
    assert bad.step("start") is None  # the swap never began

    # The live version kept serving throughout; no container of 6 was ever started.
    assert serving_version(web) == "1"
    assert service_versions(docker_client, name) == {"1": "running"}
    state = bot.ctx.store.pipeline(name)
    assert (state.live_version, state.last_good_version) == ("1", "1")
    assert gate_containers(docker_client, good.id) == []
    assert gate_containers(docker_client, bad.id) == []

    # The rollout message shows why, with the tail of the tests' output.
    [message] = [m for m in emulator.messages(CHANNEL) if m["ts"] == bad.message_ts]
    shown = str(message["blocks"])
    assert "tests failed (exit code 1)" in shown
    assert "FAIL: test_checkout expected 200 got 500" in shown and "```" in shown
    assert "failed" in message["text"]


def test_tests_that_run_too_long_are_stopped_at_the_time_limit(
    start_bot: StartBot,
    web_pipeline: Any,
    unique_name: str,
    emulator: SlackEmulator,
    docker_client: docker.DockerClient,
) -> None:
    name = unique_name
    slow = {"command": ["/bin/sh", "-c", "echo started; sleep 30"], "timeout": "2s"}
    web = web_pipeline(tests=slow)
    bot = start_bot(config(name, web))

    started = time.monotonic()
    rollout = deploy(bot, name, "1")
    took = time.monotonic() - started
    assert rollout.status is RolloutStatus.failed
    assert rollout.error == "tests failed (timed out)"
    assert "started" in rollout.logs_tail
    assert took < 20, f"the 2 s limit took {took:.1f}s to act"
    assert gate_containers(docker_client, rollout.id) == []
    assert service_versions(docker_client, name) == {}
    [message] = [m for m in emulator.messages(CHANNEL) if m["ts"] == rollout.message_ts]
    assert "tests failed (timed out)" in str(message["blocks"])


def test_the_test_container_has_no_network(
    start_bot: StartBot, web_pipeline: Any, unique_name: str
) -> None:
    name = unique_name
    probe = {"command": ["/bin/sh", "-c", "ls /sys/class/net; exit 7"], "timeout": "20s"}
    bot = start_bot(config(name, web_pipeline(tests=probe)))
    rollout = deploy(bot, name, "1")
    assert rollout.error == "tests failed (exit code 7)"
    assert rollout.logs_tail.split() == ["lo"]


def test_rollbacks_skip_the_test_gate(
    start_bot: StartBot, web_pipeline: Any, unique_name: str
) -> None:
    name = unique_name
    bot = start_bot(config(name, web_pipeline(tests=IMAGE_TESTS)))
    assert deploy(bot, name, "1").status is RolloutStatus.good
    assert deploy(bot, name, "2").status is RolloutStatus.good
    reply = answer(bot.slack.command("/rollback", f"{name} 1", user_id=DEV))
    rollback = wait_finished(bot, rollout_id_in(reply))
    assert rollback.status is RolloutStatus.good and rollback.version == "1"
    assert rollback.step("test gate") is None
