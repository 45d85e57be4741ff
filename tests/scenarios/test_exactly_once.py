"""Exactly once: Slack's redeliveries, double clicks, simultaneous approvers, crowds of /deploys.

Requests are fired for real from threads, released together by a barrier, at one bot or at two
replicas sharing one Redis prefix (a second `start_bot` in a test gets the same prefix). What
holds them to one outcome is Redis (SET NX, Lua, WATCH/MULTI), never a lock in this process.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pytest

from bot.domain.models import RolloutStatus
from bot.slack.ids import ActionId
from tests.support.bot_harness import CHANNEL, SIGNING_SECRET, InProcessBot
from tests.support.policy import (
    ADMIN,
    DEV,
    DEV2,
    LEAD,
    LEAD2,
    OUTSIDER,
    action_ids,
    answer,
    approval_message,
    audit,
    button_answer,
    config,
    message_text,
    rollout_id_in,
    rollouts,
    wait_finished,
)
from tests.support.slack_client import SignedSlackClient, SlackHttpResponse
from tests.support.slack_emulator import SlackEmulator

pytestmark = pytest.mark.docker

StartBot = Callable[..., InProcessBot]
APPROVE, REJECT = ActionId.deploy_approve.value, ActionId.deploy_reject.value
T = TypeVar("T")


def all_at_once(calls: Sequence[Callable[[], T]], timeout: float = 30.0) -> list[T]:
    """Run every call on its own thread, released together; results in the calls' order."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index: int, call: Callable[[], T]) -> None:
        try:
            barrier.wait(timeout)
            results[index] = call()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not errors, errors
    assert all(not thread.is_alive() for thread in threads)
    return results


def client_of(bot: InProcessBot, emulator: SlackEmulator) -> SignedSlackClient:
    """A client of its own per thread, as every Slack delivery is its own connection."""
    return SignedSlackClient(bot.url, SIGNING_SECRET, emulator=emulator)


def command_at(
    bot: InProcessBot, emulator: SlackEmulator, text: str, **options: Any
) -> Callable[[], SlackHttpResponse]:
    return lambda: client_of(bot, emulator).command("/deploy", text, **options)


def test_a_slash_command_delivered_three_times_runs_once(
    start_bot: StartBot, web_pipeline: Any, unique_name: str
) -> None:
    name = unique_name
    bot = start_bot(config(name, web_pipeline()))
    trigger = bot.slack.new_trigger_id()

    first = answer(bot.slack.command("/deploy", f"{name} 1", user_id=DEV, trigger_id=trigger))
    assert first.startswith("Deploying"), first
    for retry in (1, 2):
        again = answer(
            bot.slack.command(
                "/deploy",
                f"{name} 1",
                user_id=DEV,
                trigger_id=trigger,
                retry_num=retry,
                retry_reason="http_timeout",
            )
        )
        assert again.startswith(f"Already answered `/deploy {name} 1`"), again
        assert first in again  # the same answer as the first delivery got
    assert len(rollouts(bot, name)) == 1
    assert wait_finished(bot, rollout_id_in(first)).status is RolloutStatus.good
    assert [e.outcome for e in audit(bot, name) if e.actor == DEV] == ["accepted"]


def test_a_slash_command_delivered_three_times_at_once_runs_once(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    bot = start_bot(config(name, web_pipeline()))
    trigger = bot.slack.new_trigger_id()

    replies = all_at_once(
        [
            command_at(bot, emulator, f"{name} 1", user_id=DEV, trigger_id=trigger, retry_num=n)
            for n in (None, 1, 2)
        ]
    )
    texts = [answer(reply) for reply in replies]
    assert len([t for t in texts if t.startswith("Deploying")]) == 1, texts
    assert len([t for t in texts if t.startswith("Already")]) == 2, texts
    [rollout] = rollouts(bot, name)
    assert wait_finished(bot, rollout.id).status is RolloutStatus.good


def test_a_refusal_delivered_again_is_answered_alike_and_audited_once(
    start_bot: StartBot, web_pipeline: Any, unique_name: str
) -> None:
    name = unique_name
    bot = start_bot(config(name, web_pipeline(deployers=[DEV])))
    trigger = bot.slack.new_trigger_id()

    refused = answer(
        bot.slack.command("/deploy", f"{name} 1", user_id=OUTSIDER, trigger_id=trigger)
    )
    assert "You are not a deployer" in refused
    again = answer(
        bot.slack.command("/deploy", f"{name} 1", user_id=OUTSIDER, trigger_id=trigger, retry_num=1)
    )
    assert "You are not a deployer" in again and again.startswith("Already answered")
    assert [e.detail for e in audit(bot, name)] == ["not_a_deployer"]


def test_twenty_concurrent_deploys_make_one_rollout(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    bot = start_bot(config(name, web_pipeline()))
    users = [DEV, DEV2, LEAD, LEAD2, ADMIN] * 4
    replies = all_at_once(
        [
            command_at(bot, emulator, f"{name} {1 + i % 2}", user_id=user)
            for i, user in enumerate(users)
        ]
    )
    texts = [answer(reply) for reply in replies]
    accepted = [t for t in texts if t.startswith("Deploying")]
    assert len(accepted) == 1, texts
    refused = [t for t in texts if not t.startswith("Deploying")]
    assert all(f"A rollout of `{name}` is" in t and "in flight" in t for t in refused), refused
    [rollout] = rollouts(bot, name)
    assert rollout.id == rollout_id_in(accepted[0])
    assert wait_finished(bot, rollout.id).status is RolloutStatus.good
    outcomes = sorted(e.outcome for e in audit(bot, name) if e.action == "deploy")
    assert outcomes == ["accepted"] + ["refused"] * 19


def test_twenty_concurrent_deploys_across_two_replicas_make_one_rollout(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    pipelines = config(name, web_pipeline())
    replicas = [start_bot(pipelines), start_bot(pipelines)]
    assert replicas[0].ctx.store.keys.prefix == replicas[1].ctx.store.keys.prefix
    assert replicas[0].ctx.instance_id != replicas[1].ctx.instance_id

    replies = all_at_once(
        [command_at(replicas[i % 2], emulator, f"{name} 1", user_id=DEV) for i in range(20)]
    )
    texts = [answer(reply) for reply in replies]
    assert len([t for t in texts if t.startswith("Deploying")]) == 1, texts
    [rollout] = rollouts(replicas[0], name)
    assert wait_finished(replicas[1], rollout.id).status is RolloutStatus.good


def test_one_delivery_sent_to_both_replicas_at_once_runs_once(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    pipelines = config(name, web_pipeline())
    replicas = [start_bot(pipelines), start_bot(pipelines)]
    trigger = replicas[0].slack.new_trigger_id()
    replies = all_at_once(
        [
            command_at(bot, emulator, f"{name} 1", user_id=DEV, trigger_id=trigger)
            for bot in replicas * 2
        ]
    )
    texts = [answer(reply) for reply in replies]
    assert len([t for t in texts if t.startswith("Deploying")]) == 1, texts
    assert len([t for t in texts if t.startswith("Already")]) == 3, texts
    assert len(rollouts(replicas[0], name)) == 1


def press_at(
    bot: InProcessBot, emulator: SlackEmulator, message: Any, action_id: str, user: str
) -> Callable[[], SlackHttpResponse]:
    """A press on `message` as this copy shows it, from a client of its own."""
    return lambda: client_of(bot, emulator).block_action(
        action_id, message_ts=message["ts"], user_id=user, message=message
    )


def deliver(
    bot: InProcessBot, emulator: SlackEmulator, payload: dict[str, Any], retry: int | None
) -> Callable[[], SlackHttpResponse]:
    """The same interactivity payload, delivered (again) from a client of its own."""
    return lambda: client_of(bot, emulator).post_payload(payload, retry_num=retry)


def protected(web_pipeline: Any, name: str, required: int = 1) -> dict[str, Any]:
    approvals = {"required": required, "approvers": [LEAD, LEAD2, ADMIN], "expire": "10m"}
    return config(name, web_pipeline(approvals=approvals))


def request_approval(
    bot: InProcessBot, emulator: SlackEmulator, name: str, version: str = "1"
) -> Any:
    reply = answer(bot.slack.command("/deploy", f"{name} {version}", user_id=DEV))
    return rollout_id_in(reply), approval_message(bot, emulator, rollout_id_in(reply))


def test_the_same_button_press_delivered_twice_counts_once(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    bot = start_bot(protected(web_pipeline, name, required=2))
    rollout_id, request = request_approval(bot, emulator, name)

    pressed = bot.slack.block_action(APPROVE, message_ts=request["ts"], user_id=LEAD)
    first = button_answer(emulator, pressed)
    assert "(1 of 2)" in first
    again = bot.slack.post_payload(pressed.sent, retry_num=1, retry_reason="http_timeout")
    assert again.status == 200
    second = button_answer(emulator, pressed, count=2)
    assert second.startswith("Already answered that button press"), second
    assert first in second
    rollout = bot.ctx.store.rollout(rollout_id)
    assert rollout.status is RolloutStatus.awaiting_approval
    assert [a.user for a in rollout.approvals] == [LEAD]


def test_the_same_button_press_delivered_twice_at_once_counts_once(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    bot = start_bot(protected(web_pipeline, name, required=3))
    rollout_id, request = request_approval(bot, emulator, name)
    lead = bot.slack.block_action(APPROVE, message_ts=request["ts"], user_id=LEAD)
    assert "(1 of 3)" in button_answer(emulator, lead)

    # LEAD2's press, built like LEAD's real one, then delivered twice at the same instant.
    payload = copy.deepcopy(lead.sent)
    payload["user"] = {**payload["user"], "id": LEAD2, "username": "lead2", "name": "lead2"}
    payload["trigger_id"] = bot.slack.new_trigger_id()
    payload["actions"][0]["action_ts"] = f"{float(lead.sent['actions'][0]['action_ts']) + 1:.6f}"
    payload["response_url"] = emulator.response_url(channel=CHANNEL, user=LEAD2)
    replies = all_at_once([deliver(bot, emulator, payload, retry) for retry in (None, 1)])
    assert [r.status for r in replies] == [200, 200]
    posts = emulator.wait_for_response(id=payload["response_url"], count=2)
    told = sorted(str(post.body.get("text")) for post in posts)
    assert told[0].startswith("Already"), told
    assert told[1].startswith("Your approval of") and "(2 of 3)" in told[1], told
    rollout = bot.ctx.store.rollout(rollout_id)
    assert [a.user for a in rollout.approvals] == [LEAD, LEAD2]
    assert rollout.status is RolloutStatus.awaiting_approval


@pytest.mark.parametrize("required", [1, 2])
def test_approvers_pressing_at_the_same_instant_submit_the_rollout_once(
    start_bot: StartBot,
    web_pipeline: Any,
    unique_name: str,
    emulator: SlackEmulator,
    required: int,
) -> None:
    name = unique_name
    pipelines = protected(web_pipeline, name, required=required)
    replicas = [start_bot(pipelines), start_bot(pipelines)]
    rollout_id, request = request_approval(replicas[0], emulator, name)

    presses = all_at_once(
        [
            press_at(bot, emulator, request, APPROVE, user)
            for bot, user in zip(replicas * 2, [LEAD, LEAD2, ADMIN], strict=False)
        ]
    )
    told = [button_answer(emulator, reply) for reply in presses]
    assert len([t for t in told if t.startswith(f"Approved ({required} of {required})")]) == 1, told
    assert len([t for t in told if "already approved" in t]) == 3 - required, told

    rollout = wait_finished(replicas[1], rollout_id)
    assert rollout.status is RolloutStatus.good, rollout.error
    assert len(rollout.approvals) == required
    assert [s.name for s in rollout.steps].count("locate image") == 1
    completing = [e for e in audit(replicas[0], name) if e.outcome == "approved"]
    assert len(completing) == 1  # the one change that submitted the rollout
    assert len([e for e in audit(replicas[0], name) if e.action == "deploy.live"]) == 1

    # The message settles on the final word, whatever order the renders landed in.
    final = emulator.message(CHANNEL, request["ts"])
    assert action_ids(final) == []
    shown = message_text(final)
    assert "Approved" in shown
    for approval in rollout.approvals:
        assert f"approved by <@{approval.user}>" in shown


def test_approve_and_reject_at_the_same_instant_record_one_decision(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    pipelines = protected(web_pipeline, name)
    replicas = [start_bot(pipelines), start_bot(pipelines)]
    for _ in range(5):
        version = "2" if replicas[0].ctx.store.pipeline(name).live_version == "1" else "1"
        rollout_id, request = request_approval(replicas[0], emulator, name, version)
        presses = all_at_once(
            [
                press_at(bot, emulator, request, action, user)
                for bot, user, action in zip(
                    replicas * 2, [LEAD, LEAD2, ADMIN], [REJECT, APPROVE, REJECT], strict=False
                )
            ]
        )
        told = [button_answer(emulator, reply) for reply in presses]
        winners = [t for t in told if t.startswith(("Rejected:", "Approved (1 of 1)"))]
        assert len(winners) == 1, told
        assert all("already" in t for t in told if t not in winners), told
        rollout = wait_finished(replicas[1], rollout_id)
        assert len(rollout.approvals) == 1, (rollout.approvals, told)
        if rollout.approvals[0].decision == "approved":
            assert rollout.status is RolloutStatus.good, rollout.error
        else:
            assert rollout.status is RolloutStatus.rejected
            assert rollout.steps == []
        assert action_ids(emulator.message(CHANNEL, request["ts"])) == []
