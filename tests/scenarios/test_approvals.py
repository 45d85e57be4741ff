"""Approvals: the request in the channel, who may decide, N of them, expiry, rejection.

Requests are made with signed slash commands and decided with signed button presses on the
message the emulator holds, as a person in Slack would; approved deploys really run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from bot.domain.clock import FrozenClock
from bot.domain.errors import ConfigError
from bot.domain.models import RolloutStatus
from bot.plugins import parse_pipelines
from bot.slack.ids import ActionId, BlockId
from tests.support.bot_harness import CHANNEL, InProcessBot, wait_until
from tests.support.policy import (
    ADMIN,
    DEV,
    LEAD,
    LEAD2,
    OUTSIDER,
    action_ids,
    answer,
    approval_message,
    audit,
    button_answer,
    config,
    london,
    message_text,
    press,
    rollout_id_in,
    rollouts,
    wait_finished,
    wait_for_status,
)
from tests.support.slack_emulator import SlackEmulator

pytestmark = pytest.mark.docker

StartBot = Callable[..., InProcessBot]
APPROVE, REJECT = ActionId.deploy_approve.value, ActionId.deploy_reject.value
BUTTONS = [APPROVE, REJECT]
NOW = london(2025, 6, 4, 10, 0)  # a Wednesday morning


def protected(
    web_pipeline: Any,
    name: str,
    *,
    required: int = 1,
    approvers: list[str] | None = None,
    **more: Any,
) -> dict[str, Any]:
    approvals = {"required": required, "approvers": approvers or [LEAD, LEAD2], "expire": "10m"}
    return config(name, web_pipeline(approvals=approvals, **more))


def ask(bot: InProcessBot, name: str, version: str, user: str = DEV) -> str:
    reply = answer(bot.slack.command("/deploy", f"{name} {version}", user_id=user))
    assert f"`{name}` needs approval: asked in <#{CHANNEL}>" in reply, reply
    rollout_id = rollout_id_in(reply)
    assert bot.ctx.store.rollout(rollout_id).status is RolloutStatus.awaiting_approval
    return rollout_id


def test_approved_request_deploys_and_the_message_says_who_and_when(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    bot = start_bot(protected(web_pipeline, name, deployers=[DEV]), clock=FrozenClock(NOW))
    rollout_id = ask(bot, name, "1")

    request = approval_message(bot, emulator, rollout_id)
    assert action_ids(request) == BUTTONS
    actions = next(b for b in request["blocks"] if b["type"] == "actions")
    assert actions["block_id"] == BlockId.approval_actions.value
    assert {e["value"] for e in actions["elements"]} == {rollout_id}
    shown = message_text(request)
    assert "Approval needed" in shown and f"requested by <@{DEV}>" in shown
    assert f"<@{LEAD}>" in shown and f"<@{LEAD2}>" in shown
    expiry = int(NOW + 600)
    assert f"expires <!date^{expiry}^" in shown
    assert rollouts(bot, name)[0].steps == []  # nothing runs before the approval

    reply = press(bot, request, APPROVE, LEAD)
    told = button_answer(emulator, reply)
    assert told.startswith("Approved (1 of 1): deploying"), told

    updated = emulator.message(CHANNEL, request["ts"])
    assert updated is not None and action_ids(updated) == []
    shown = message_text(updated)
    assert "Approved" in shown and f"approved by <@{LEAD}> <!date^{int(NOW)}^" in shown
    assert any(c.body.get("ts") == request["ts"] for c in emulator.calls("chat.update"))

    rollout = wait_finished(bot, rollout_id)
    assert rollout.status is RolloutStatus.good, rollout.error
    assert [(a.user, a.decision, a.at) for a in rollout.approvals] == [(LEAD, "approved", NOW)]
    # The rollout's own progress message, apart from the request, says who approved it.
    progress = emulator.message(CHANNEL, rollout.message_ts)
    assert rollout.message_ts != request["ts"]
    assert f"approved by <@{LEAD}>" in message_text(progress)
    trail = [(e.actor, e.action, e.outcome) for e in audit(bot, name)]
    assert trail[:2] == [(DEV, "deploy", "awaiting_approval"), (LEAD, "approve", "approved")]
    assert ("immune", "deploy.live", "good") in trail


def test_the_requester_cannot_approve_their_own_rollout(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    bot = start_bot(protected(web_pipeline, name))
    rollout_id = ask(bot, name, "1", user=LEAD)
    request = approval_message(bot, emulator, rollout_id)
    assert f"from <@{LEAD2}>" in message_text(request)  # the requester is not offered

    told = button_answer(emulator, press(bot, request, APPROVE, LEAD))
    assert "You asked for this deploy, so you cannot approve it yourself" in told
    assert f"<@{LEAD2}>" in told
    assert bot.ctx.store.rollout(rollout_id).status is RolloutStatus.awaiting_approval
    assert bot.ctx.store.rollout(rollout_id).approvals == []
    assert action_ids(emulator.message(CHANNEL, request["ts"])) == BUTTONS
    refused = [e for e in audit(bot, name) if e.outcome == "refused"]
    assert [(e.actor, e.action, e.detail) for e in refused] == [(LEAD, "approve", "own_rollout")]

    press(bot, request, APPROVE, LEAD2)
    assert wait_finished(bot, rollout_id).status is RolloutStatus.good


def test_a_request_that_cannot_be_posted_deploys_nothing_and_frees_the_pipeline(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    bot = start_bot(protected(web_pipeline, name))
    emulator.fail_next("chat.postMessage", "not_in_channel")
    reply = answer(bot.slack.command("/deploy", f"{name} 1", user_id=DEV))
    assert f"Could not ask for approval in <#{CHANNEL}>, so nothing will be deployed" in reply
    [rollout] = rollouts(bot, name)
    assert rollout.status is RolloutStatus.cancelled
    assert bot.ctx.store.pipeline(name).inflight_rollout == ""
    assert bot.ctx.store.rollout_lock_holder(name) is None
    ask(bot, name, "1")  # once Slack answers again, a new request goes out


def test_a_request_nobody_else_could_approve_is_refused_at_once(
    start_bot: StartBot, web_pipeline: Any, unique_name: str
) -> None:
    name = unique_name
    bot = start_bot(protected(web_pipeline, name, approvers=[LEAD]))
    reply = answer(bot.slack.command("/deploy", f"{name} 1", user_id=LEAD))
    assert "needs 1 approval(s) from people other than the requester" in reply
    assert rollouts(bot, name) == []
    assert [e.detail for e in audit(bot, name)] == ["not_approvable"]


def test_only_listed_approvers_count(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    bot = start_bot(protected(web_pipeline, name))
    rollout_id = ask(bot, name, "1")
    request = approval_message(bot, emulator, rollout_id)

    for user in (OUTSIDER, DEV, ADMIN):
        for button in BUTTONS:
            told = button_answer(emulator, press(bot, request, button, user))
            assert f"You are not an approver of `{name}`" in told
            assert f"<@{LEAD}>" in told and f"<@{LEAD2}>" in told
    rollout = bot.ctx.store.rollout(rollout_id)
    assert rollout.status is RolloutStatus.awaiting_approval and rollout.approvals == []
    assert action_ids(emulator.message(CHANNEL, request["ts"])) == BUTTONS
    refused = [(e.actor, e.detail) for e in audit(bot, name) if e.outcome == "refused"]
    assert len(refused) == 6 and {detail for _, detail in refused} == {"not_an_approver"}


def test_two_required_means_two_distinct_approvers(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    bot = start_bot(protected(web_pipeline, name, required=2, approvers=[LEAD, LEAD2, ADMIN]))
    rollout_id = ask(bot, name, "1")
    request = approval_message(bot, emulator, rollout_id)
    assert "Needs 2 approval(s) (0 so far)" in message_text(request)

    told = button_answer(emulator, press(bot, request, APPROVE, LEAD))
    assert "Your approval of" in told and "(1 of 2)" in told
    partial = emulator.message(CHANNEL, request["ts"])
    assert action_ids(partial) == BUTTONS  # still open
    assert "(1 so far)" in message_text(partial)
    assert f"approved by <@{LEAD}>" in message_text(partial)

    told = button_answer(emulator, press(bot, request, APPROVE, LEAD))
    assert "You already approved" in told and "(1 of 2)" in told
    assert bot.ctx.store.rollout(rollout_id).status is RolloutStatus.awaiting_approval

    told = button_answer(emulator, press(bot, request, APPROVE, LEAD2))
    assert told.startswith("Approved (2 of 2)"), told
    rollout = wait_finished(bot, rollout_id)
    assert rollout.status is RolloutStatus.good
    assert [a.user for a in rollout.approvals] == [LEAD, LEAD2]
    assert [s.name for s in rollout.steps].count("locate image") == 1
    final = emulator.message(CHANNEL, request["ts"])
    assert action_ids(final) == []
    assert f"approved by <@{LEAD}>" in message_text(final)
    assert f"approved by <@{LEAD2}>" in message_text(final)

    # A late press on a stale copy of the message is answered, and changes nothing.
    told = button_answer(emulator, press(bot, request, APPROVE, ADMIN))
    assert "already approved" in told
    assert len(bot.ctx.store.rollout(rollout_id).approvals) == 2


def test_a_rejection_ends_the_request(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    bot = start_bot(protected(web_pipeline, name, required=2), clock=FrozenClock(NOW))
    first = ask(bot, name, "1")
    request = approval_message(bot, emulator, first)
    press(bot, request, APPROVE, LEAD)

    told = button_answer(emulator, press(bot, request, REJECT, LEAD2))
    assert told.startswith("Rejected:"), told
    rollout = bot.ctx.store.rollout(first)
    assert rollout.status is RolloutStatus.rejected and rollout.finished_at == NOW
    shown = emulator.message(CHANNEL, request["ts"])
    assert action_ids(shown) == []
    assert "Rejected" in message_text(shown)
    assert f"rejected by <@{LEAD2}> <!date^{int(NOW)}^" in message_text(shown)
    # The requester hears of it, and the pipeline is free for a new request.
    assert any("was rejected by" in e["text"] for e in emulator.ephemerals(user=DEV))
    assert bot.ctx.store.pipeline(name).inflight_rollout == ""
    second = ask(bot, name, "1")
    assert second != first

    told = button_answer(emulator, press(bot, request, APPROVE, LEAD))
    assert "already rejected" in told
    assert bot.ctx.store.rollout(first).status is RolloutStatus.rejected
    assert ("U0LEAD2", "reject", "rejected") in [
        (e.actor, e.action, e.outcome) for e in audit(bot, name)
    ]


def test_a_press_after_expiry_answers_that_it_expired(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    clock = FrozenClock(NOW)
    bot = start_bot(protected(web_pipeline, name), clock=clock)
    rollout_id = ask(bot, name, "1")
    request = approval_message(bot, emulator, rollout_id)

    clock.advance(599)
    assert bot.ctx.store.rollout(rollout_id).status is RolloutStatus.awaiting_approval
    clock.advance(1)
    told = button_answer(emulator, press(bot, request, APPROVE, LEAD))
    assert "expired" in told and "nothing was deployed" in told

    rollout = bot.ctx.store.rollout(rollout_id)
    assert rollout.status is RolloutStatus.expired and rollout.approvals == []
    shown = emulator.message(CHANNEL, request["ts"])
    assert action_ids(shown) == [] and "expired" in message_text(shown)
    assert bot.ctx.store.pipeline(name).inflight_rollout == ""
    assert bot.ctx.store.rollout_lock_holder(name) is None
    assert ("immune", "deploy.expired", "expired") in [
        (e.actor, e.action, e.outcome) for e in audit(bot, name)
    ]


def test_a_request_expires_when_nobody_presses_anything(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    clock = FrozenClock(NOW)
    bot = start_bot(protected(web_pipeline, name), clock=clock)
    rollout_id = ask(bot, name, "1")
    request = approval_message(bot, emulator, rollout_id)

    clock.advance(601)
    wait_for_status(bot, rollout_id, RolloutStatus.expired, timeout=10)
    shown = wait_until(
        lambda: (m := emulator.message(CHANNEL, request["ts"])) and not action_ids(m) and m,
        10,
        what="the request's message to lose its buttons",
    )
    assert "expired" in message_text(shown)
    assert any("expired without enough approvals" in e["text"] for e in emulator.ephemerals())
    assert len([m for m in emulator.messages(CHANNEL) if rollout_id in m.get("text", "")]) == 1
    # The pipeline is free again.
    ask(bot, name, "1")


def test_a_request_expires_after_the_bot_restarted(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    clock = FrozenClock(NOW)
    pipelines = protected(web_pipeline, name)
    first = start_bot(pipelines, clock=clock)
    rollout_id = ask(first, name, "1")
    request = approval_message(first, emulator, rollout_id)
    first.stop()

    clock.advance(3600)
    second = start_bot(pipelines, clock=clock)  # same Redis prefix: the same install
    wait_for_status(second, rollout_id, RolloutStatus.expired, timeout=10)
    shown = emulator.message(CHANNEL, request["ts"])
    assert action_ids(shown) == [] and "expired" in message_text(shown)


def test_an_orphaned_request_expires_when_its_lock_lapses(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    # The clock never moves: only the lock's TTL (expire + LOCK_TTL_SECONDS, in Redis time)
    # runs out, as when every bot that could have expired it was gone for that long.
    name = unique_name
    clock = FrozenClock(NOW)
    pipelines = config(name, web_pipeline(approvals={"approvers": [LEAD], "expire": "1s"}))
    bot = start_bot(pipelines, clock=clock)
    rollout_id = ask(bot, name, "1")
    request = approval_message(bot, emulator, rollout_id)
    ttl = bot.ctx.store.redis.pttl(bot.ctx.store.keys.rollout_lock(name))
    assert 3000 < ttl <= 4000  # expire (1 s) + lock TTL (3 s)

    wait_for_status(bot, rollout_id, RolloutStatus.expired, timeout=15)
    assert action_ids(emulator.message(CHANNEL, request["ts"])) == []
    entry = next(e for e in audit(bot, name) if e.action == "deploy.expired")
    assert "lock lapsed" in entry.detail


def test_the_runners_recovery_of_a_request_expires_it_and_its_message(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    bot = start_bot(protected(web_pipeline, name), clock=FrozenClock(NOW))
    rollout_id = ask(bot, name, "1")
    request = approval_message(bot, emulator, rollout_id)

    bot.ctx.runner.submit_recovery(rollout_id).result(timeout=10)
    assert bot.ctx.store.rollout(rollout_id).status is RolloutStatus.expired
    assert action_ids(emulator.message(CHANNEL, request["ts"])) == []
    assert bot.ctx.store.pipeline(name).inflight_rollout == ""


def test_a_halt_cancels_a_pending_request(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    bot = start_bot(protected(web_pipeline, name))
    rollout_id = ask(bot, name, "1")
    request = approval_message(bot, emulator, rollout_id)

    answer(bot.slack.command("/halt", f"{name} bad idea", user_id=OUTSIDER))
    rollout = bot.ctx.store.rollout(rollout_id)
    assert rollout.status is RolloutStatus.cancelled
    shown = emulator.message(CHANNEL, request["ts"])
    assert action_ids(shown) == []
    assert f"pipeline halted by <@{OUTSIDER}>" in message_text(shown)
    told = button_answer(emulator, press(bot, request, APPROVE, LEAD))
    assert "cancelled" in told
    assert bot.ctx.store.rollout(rollout_id).status is RolloutStatus.cancelled


def test_rollbacks_need_no_approval(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    bot = start_bot(protected(web_pipeline, name))
    for version in ("1", "2"):
        rollout_id = ask(bot, name, version)
        press(bot, approval_message(bot, emulator, rollout_id), APPROVE, LEAD)
        assert wait_finished(bot, rollout_id).status is RolloutStatus.good
    reply = answer(bot.slack.command("/rollback", f"{name} 1", user_id=DEV))
    assert reply.startswith(f"Rolling `{name}` back to `1`"), reply
    assert wait_finished(bot, rollout_id_in(reply)).status is RolloutStatus.good


@pytest.mark.parametrize(
    ("approvals", "problem"),
    [
        ({"approvers": []}, "approvals.approvers is empty"),
        ({"required": 1}, "approvals.approvers: required key is missing"),
        ({"required": 3, "approvers": ["U1", "U2", "U2"]}, "only 2 distinct approvers"),
        ({"required": 0, "approvers": ["U1"]}, "approvals.required"),
        ({"approvers": ["U1"], "expire": "0s"}, "approvals.expire"),
    ],
)
def test_an_approvals_block_nobody_can_satisfy_is_a_config_error(
    approvals: dict[str, Any], problem: str
) -> None:
    pipeline = {
        "channel": CHANNEL,
        "image": "demo/web",
        "container": {"name": "web"},
        "health": {"url": "http://127.0.0.1:9/healthz"},
        "approvals": approvals,
    }
    with pytest.raises(ConfigError) as refused:
        parse_pipelines({"pipelines": {"web": pipeline}}, source="pipelines.yml")
    assert "pipelines.yml: pipelines.web.approvals" in refused.value.message
    assert problem in refused.value.message


def test_a_request_expires_once_with_three_replicas(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    # Every replica's recovery pass looks for due requests every 2 s; one expiry, one message.
    name = unique_name
    clock = FrozenClock(NOW)
    pipelines = protected(web_pipeline, name)
    replicas = [start_bot(pipelines, clock=clock) for _ in range(3)]
    rollout_id = ask(replicas[0], name, "1")
    request = approval_message(replicas[0], emulator, rollout_id)

    clock.advance(601)
    wait_for_status(replicas[1], rollout_id, RolloutStatus.expired, timeout=10)
    time.sleep(4.5)  # two more recovery passes on every replica
    expiries = [e for e in audit(replicas[2], name) if e.action == "deploy.expired"]
    assert len(expiries) == 1, expiries
    told = [e for e in emulator.ephemerals() if "expired without enough approvals" in e["text"]]
    assert len(told) == 1, told
    shown = emulator.message(CHANNEL, request["ts"])
    assert action_ids(shown) == [] and "expired" in message_text(shown)
