"""The deploy queue: "Queue it" on a refusal because the pipeline is busy or outside its window,
a queued deploy starting by itself (once, across restarts and replicas), halts freezing it.

Pipelines need approval, so a deploy holds the pipeline while it awaits a decision and a
started queued deploy shows as a fresh approval request: the engine is asked only to locate
the demo images, no container runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.domain.clock import FrozenClock
from bot.domain.models import Rollout, RolloutStatus
from bot.slack.ids import ActionId
from tests.scenarios.test_home import open_home, wait_for_home
from tests.support.bot_harness import CHANNEL, InProcessBot, wait_until
from tests.support.policy import (
    ADMIN,
    DEV,
    DEV2,
    LEAD,
    LEAD2,
    answer,
    approval_message,
    audit,
    button_answer,
    config,
    london,
    press,
    rollout_id_in,
    rollouts,
)
from tests.support.slack_client import SlackHttpResponse
from tests.support.slack_emulator import SlackEmulator

pytestmark = pytest.mark.docker

StartBot = Callable[..., InProcessBot]
QUEUE_CHECK = 0.3  # QUEUE_CHECK_SECONDS of these bots
QUIET = 8 * QUEUE_CHECK  # several checks of the queue


def protected(web_pipeline: Any, name: str, **more: Any) -> dict[str, Any]:
    approvals = {"required": 1, "approvers": [LEAD, LEAD2], "expire": "10m"}
    return config(name, web_pipeline(approvals=approvals, **more))


def ask(bot: InProcessBot, name: str, version: str, user: str = DEV) -> str:
    reply = answer(bot.slack.command("/deploy", f"{name} {version}", user_id=user))
    assert f"`{name}` needs approval: asked in <#{CHANNEL}>" in reply, reply
    return rollout_id_in(reply)


def refused_with_queue(
    bot: InProcessBot, name: str, version: str, user: str
) -> tuple[str, dict[str, Any]]:
    """A refused /deploy: its text, and the ephemeral message holding the "Queue it" button."""
    response = bot.slack.command("/deploy", f"{name} {version}", user_id=user)
    text = answer(response)
    body = response.json()
    [button] = [
        e
        for block in body.get("blocks") or []
        for e in block.get("elements", [])
        if e.get("action_id") == ActionId.deploy_queue
    ]
    assert button["value"] == f"{name} {version}"
    return text, {"ts": "", "blocks": body["blocks"]}


def queue_it(
    bot: InProcessBot, emulator: SlackEmulator, message: dict[str, Any], user: str
) -> tuple[str, SlackHttpResponse]:
    reply = press(bot, message, ActionId.deploy_queue, user)
    return button_answer(emulator, reply), reply


def rollouts_of(bot: InProcessBot, name: str, version: str) -> list[Rollout]:
    return [r for r in rollouts(bot, name) if r.version == version]


def started(bot: InProcessBot, name: str, version: str, by: str) -> Rollout:
    def found() -> Rollout | None:
        for rollout in rollouts_of(bot, name, version):
            if rollout.requested_by == by:
                return rollout
        return None

    rollout: Rollout = wait_until(found, 15, what=f"the queued {version} of {name} to start")
    return rollout


def told(emulator: SlackEmulator, user: str, *parts: str) -> str:
    def note() -> str | None:
        for ephemeral in emulator.ephemerals(CHANNEL, user):
            if all(part in ephemeral.get("text", "") for part in parts):
                return str(ephemeral["text"])
        return None

    found: str = wait_until(note, 15, what=f"{user} told {parts}")
    return found


def reject(bot: InProcessBot, emulator: SlackEmulator, rollout_id: str) -> None:
    message = approval_message(bot, emulator, rollout_id)
    press(bot, message, ActionId.deploy_reject, LEAD)
    wait_until(
        lambda: bot.ctx.store.rollout(rollout_id).status is RolloutStatus.rejected,
        what=f"{rollout_id} rejected",
    )


def test_a_busy_pipeline_queues_the_deploy_and_starts_it_when_free(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    bot = start_bot(protected(web_pipeline, name), queue_check_seconds=QUEUE_CHECK)
    first = ask(bot, name, "1")

    refusal, message = refused_with_queue(bot, name, "2", DEV2)
    assert f"A rollout of `{name}` is already in flight" in refusal
    queued, _ = queue_it(bot, emulator, message, DEV2)
    assert f"Queued `2` for `{name}`: you are 1st in its queue" in queued, queued
    assert "when the rollout in flight ends" in queued
    # One place per person and pipeline: a second press (a new trigger) is told so.
    again, _ = queue_it(bot, emulator, message, DEV2)
    assert "You already hold a place in the queue" in again, again
    assert [e.version for e in bot.ctx.store.queue(name)] == ["2"]
    # A second person queues behind.
    _, admin_message = refused_with_queue(bot, name, "1", ADMIN)
    second, _ = queue_it(bot, emulator, admin_message, ADMIN)
    assert "you are 2nd in its queue" in second, second
    # The Home tab shows the queue, in order.
    open_home(bot, DEV2)
    wait_for_home(
        emulator, DEV2, f":hourglass_flowing_sand: queue: `2` by <@{DEV2}>, `1` by <@{ADMIN}>"
    )
    time.sleep(QUIET)
    assert rollouts_of(bot, name, "2") == [], "nothing starts while the pipeline is busy"

    reject(bot, emulator, first)
    rollout = started(bot, name, "2", DEV2)
    # Every rule again: the pipeline needs approval, so it is asked for again.
    assert rollout.status is RolloutStatus.awaiting_approval
    assert approval_message(bot, emulator, rollout.id)
    note = told(emulator, DEV2, "Your queued deploy started.", "needs approval")
    assert rollout.id in note
    assert [e.requested_by for e in bot.ctx.store.queue(name)] == [ADMIN]
    outcomes = [(e.actor, e.action, e.outcome) for e in audit(bot, name) if e.action == "queue"]
    assert (DEV2, "queue", "queued") in outcomes and (DEV2, "queue", "started") in outcomes


def test_a_halt_freezes_the_queue_and_resume_says_what_starts(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    bot = start_bot(protected(web_pipeline, name), queue_check_seconds=QUEUE_CHECK)
    ask(bot, name, "1")
    _, message = refused_with_queue(bot, name, "2", DEV2)
    queue_it(bot, emulator, message, DEV2)
    _, admin_message = refused_with_queue(bot, name, "2", ADMIN)
    _, admin_press = queue_it(bot, emulator, admin_message, ADMIN)

    # ADMIN leaves the queue with the button on the answer they got.
    posts = emulator.wait_for_response(id=admin_press.response_url)
    leave = press(
        bot, {"ts": "", "blocks": posts[-1].body["blocks"]}, ActionId.deploy_unqueue, ADMIN
    )
    assert f"You left the queue of `{name}`" in button_answer(emulator, leave)
    assert [e.requested_by for e in bot.ctx.store.queue(name)] == [DEV2]

    # The halt cancels the request awaiting approval; the queue stays, frozen.
    answer(bot.slack.command("/halt", f"{name} freeze", user_id=DEV))
    wait_until(lambda: not bot.ctx.store.pipeline(name).inflight_rollout, what="pipeline free")
    time.sleep(QUIET)
    assert rollouts_of(bot, name, "2") == []
    assert [e.requested_by for e in bot.ctx.store.queue(name)] == [DEV2]

    resumed = answer(bot.slack.command("/resume", name, user_id=DEV))
    assert f"`{name}` is open again." in resumed
    assert f"Its queue starts again, in this order: `2` by <@{DEV2}>" in resumed, resumed
    assert started(bot, name, "2", DEV2).status is RolloutStatus.awaiting_approval
    assert bot.ctx.store.queue(name) == []


def test_a_queued_deploy_survives_a_restart_and_a_deleted_pipeline_is_said(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name, gone = unique_name, f"{unique_name}-gone"
    pipelines = protected(web_pipeline, name)
    approvals = pipelines["pipelines"][name]["approvals"]
    pipelines["pipelines"][gone] = web_pipeline("gone", approvals=approvals)
    first_bot = start_bot(pipelines, queue_check_seconds=QUEUE_CHECK)
    busy = ask(first_bot, name, "1")
    ask(first_bot, gone, "1")
    _, message = refused_with_queue(first_bot, name, "2", DEV2)
    queue_it(first_bot, emulator, message, DEV2)
    _, gone_message = refused_with_queue(first_bot, gone, "2", DEV2)
    queue_it(first_bot, emulator, gone_message, DEV2)
    first_bot.stop()

    # The same install (Redis prefix) started again, with `gone` deleted from the config.
    del pipelines["pipelines"][gone]
    second_bot = start_bot(pipelines, queue_check_seconds=QUEUE_CHECK)
    told(emulator, DEV2, f"queued deploy of `2` to `{gone}` did not start", "no longer in")
    assert second_bot.ctx.store.queue(gone) == []
    assert second_bot.ctx.store.queue(name)[0].version == "2"
    reject(second_bot, emulator, busy)
    assert started(second_bot, name, "2", DEV2).status is RolloutStatus.awaiting_approval


def test_two_replicas_start_a_queued_deploy_exactly_once(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    pipelines = protected(web_pipeline, name)
    replicas = [start_bot(pipelines, queue_check_seconds=0.1) for _ in range(2)]
    busy = ask(replicas[0], name, "1")
    for user, version in ((DEV2, "2"), (ADMIN, "1")):
        _, message = refused_with_queue(replicas[1], name, version, user)
        queue_it(replicas[1], emulator, message, user)

    reject(replicas[0], emulator, busy)
    rollout = started(replicas[0], name, "2", DEV2)
    time.sleep(QUIET)
    # Once: one rollout of 2, and ADMIN's waits behind it (the pipeline is busy again).
    assert [r.id for r in rollouts_of(replicas[1], name, "2")] == [rollout.id]
    assert [e.requested_by for e in replicas[1].ctx.store.queue(name)] == [ADMIN]
    starts = [e for e in audit(replicas[0], name) if e.action == "queue" and e.outcome == "started"]
    assert len(starts) == 1
    assert (
        len(
            [
                e
                for e in emulator.ephemerals(CHANNEL, DEV2)
                if "queued deploy started" in e.get("text", "")
            ]
        )
        == 1
    )


def test_a_queued_deploy_starts_when_the_window_opens_across_a_dst_change(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    clock = FrozenClock(london(2025, 3, 29, 12, 0))  # Saturday, GMT; Sunday 09:00 is BST
    sunday = [{"days": "sun", "hours": "09:00-17:00"}]
    bot = start_bot(
        protected(web_pipeline, name, windows=sunday), clock=clock, queue_check_seconds=QUEUE_CHECK
    )
    opens = int(datetime(2025, 3, 30, 8, 0, tzinfo=UTC).timestamp())  # 09:00 BST = 08:00 UTC

    refusal, message = refused_with_queue(bot, name, "1", DEV)
    assert "outside its deploy windows" in refusal
    queued, _ = queue_it(bot, emulator, message, DEV)
    assert f"when its window opens (<!date^{opens}^" in queued, queued

    clock.set(opens - 1)
    time.sleep(QUIET)
    assert rollouts_of(bot, name, "1") == [], "09:00 GMT is not 09:00 in London that day"
    clock.set(opens)
    rollout = started(bot, name, "1", DEV)
    assert rollout.status is RolloutStatus.awaiting_approval
    assert rollout.created_at == opens
    told(emulator, DEV, "Your queued deploy started.")


@pytest.mark.slow
def test_a_queued_deploy_survives_kill_minus_9_of_the_bot(
    start_bot_process: Any,
    web_pipeline: Any,
    redis_client: Any,
    redis_prefix: str,
    emulator: SlackEmulator,
) -> None:
    approvals = {"required": 1, "approvers": [LEAD, LEAD2], "expire": "10m"}
    bot = start_bot_process(
        config("web", web_pipeline(approvals=approvals)), queue_check_seconds=QUEUE_CHECK
    )

    def rollouts_in_redis() -> list[dict[str, Any]]:
        ids = redis_client.zrevrange(f"{redis_prefix}:pipeline:web:rollouts", 0, 20)
        return [json.loads(redis_client.get(f"{redis_prefix}:rollout:{i}")) for i in ids]

    busy = answer(bot.slack.command("/deploy", "web 1", user_id=DEV))
    busy_id = rollout_id_in(busy)
    response = bot.slack.command("/deploy", "web 2", user_id=DEV2)
    assert "already in flight" in answer(response)
    pressed = press(
        bot,  # a BotProcess: press only needs its signed client
        {"ts": "", "blocks": response.json()["blocks"]},
        ActionId.deploy_queue,
        DEV2,
    )
    assert "Queued `2` for `web`" in button_answer(emulator, pressed)

    bot.kill()
    bot.start()
    [first] = [r for r in rollouts_in_redis() if r["id"] == busy_id]
    approval = wait_until(lambda: emulator.message(CHANNEL, first["approval_ts"]), what="request")
    rejected = bot.slack.block_action(
        ActionId.deploy_reject, message_ts=first["approval_ts"], user_id=LEAD, message=approval
    )
    assert rejected.status == 200
    started_after_restart = wait_until(
        lambda: [r for r in rollouts_in_redis() if r["version"] == "2"],
        20,
        what="the queued deploy to start after the restart",
    )
    assert [(r["requested_by"], r["status"]) for r in started_after_restart] == [
        (DEV2, "awaiting_approval")
    ]
    told(emulator, DEV2, "Your queued deploy started.")
