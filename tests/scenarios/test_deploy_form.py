"""The deploy and rollback forms: `/deploy` without a version opens a modal (`views.open`), the
engine's versions are filled in (`views.update`), and a submission (`view_submission`) takes
the slash command's path; what is wrong now is a field error (`response_action: errors`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import pytest

from bot.domain.models import RolloutStatus
from bot.slack.ids import ActionId
from tests.support.bot_harness import InProcessBot, wait_until
from tests.support.policy import (
    DEV,
    DEV2,
    LEAD,
    OUTSIDER,
    answer,
    config,
    rollout_id_in,
    rollouts,
    wait_finished,
)
from tests.support.slack_client import SlackHttpResponse
from tests.support.slack_emulator import SlackEmulator

pytestmark = pytest.mark.docker

StartBot = Callable[..., InProcessBot]


def opened_form(
    bot: InProcessBot,
    emulator: SlackEmulator,
    text: str,
    user: str = DEV,
    callback: str = "deploy_form",
) -> dict[str, Any]:
    """`/deploy <text>` (or /rollback) and the form it opened, once its versions are in."""
    before = len(emulator.calls("views.open"))
    command = "/deploy" if callback == "deploy_form" else "/rollback"
    response = bot.slack.command(command, text, user_id=user)
    assert response.status == 200, response.text
    assert response.text == "", f"the form was not opened: {response.text}"
    opens = emulator.calls("views.open")
    assert len(opens) == before + 1 and opens[-1].ok, opens[-1].response
    view = emulator.latest_view(callback)
    assert view is not None
    return view


def filled(emulator: SlackEmulator, view_id: str) -> dict[str, Any]:
    def versions_in() -> dict[str, Any] | None:
        view = emulator.view(view_id)
        if view and any(b.get("block_id") == "version" for b in view["blocks"]):
            return view
        return None

    found: dict[str, Any] = wait_until(versions_in, 10, what="the form's versions")
    return found


def options(view: dict[str, Any], block_id: str) -> list[tuple[str, str]]:
    [block] = [b for b in view["blocks"] if b.get("block_id") == block_id]
    return [(o["value"], o["text"]["text"]) for o in block["element"]["options"]]


def choose(pipeline: str, version: str, reason: str = "") -> dict[str, Any]:
    values: dict[str, Any] = {
        "pipeline": {"pipeline": {"type": "static_select", "selected_option": {"value": pipeline}}},
        "version": {"version": {"type": "static_select", "selected_option": {"value": version}}},
    }
    if reason:
        values["reason"] = {"answer": reason}
    return values


def submit(
    bot: InProcessBot, view: dict[str, Any], values: dict[str, Any], user: str = DEV
) -> dict[str, Any]:
    response: SlackHttpResponse = bot.slack.view_submission(
        view["callback_id"], values, user_id=user, view_id=view["id"]
    )
    assert response.status == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def shown(body: dict[str, Any]) -> str:
    assert body.get("response_action") == "update", body
    return "\n".join(b["text"]["text"] for b in body["view"]["blocks"] if b.get("text"))


def test_the_form_offers_the_engines_versions_newest_first_and_deploys_once(
    start_bot: StartBot,
    web_pipeline: Any,
    unique_name: str,
    emulator: SlackEmulator,
    demo_images: Any,
    docker_client: Any,
) -> None:
    name = unique_name
    bot = start_bot(config(name, web_pipeline(deployers=[DEV])))
    first = answer(bot.slack.command("/deploy", f"{name} 1", user_id=DEV))
    wait_finished(bot, rollout_id_in(first))

    view = filled(emulator, opened_form(bot, emulator, name)["id"])
    offered = options(view, "version")
    assert options(view, "pipeline") == [(name, name)]
    assert sorted(v for v, _ in offered) == sorted(demo_images.tags)
    assert dict(offered)["1"] == "1 (live)" and dict(offered)["2"] == "2"
    created = [docker_client.images.get(demo_images.ref(v)).attrs["Created"] for v, _ in offered]
    assert created == sorted(created, reverse=True), "newest image first"

    body = submit(bot, view, choose(name, "2", reason="ticket 7"))
    text = shown(body)
    assert f"Deploying `{demo_images.ref('2')}` to `{name}`" in text and "ticket 7" in text
    assert wait_finished(bot, rollout_id_in(text)).status is RolloutStatus.good
    # The same submission again (Slack's retry, a double click): answered, not deployed twice.
    again = shown(submit(bot, view, choose(name, "2", reason="ticket 7")))
    assert "Already answered" in again, again
    assert len([r for r in rollouts(bot, name) if r.version == "2"]) == 1
    reasons = [e.detail for e in bot.ctx.store.audit_entries(pipeline=name, limit=100)]
    assert "ticket 7" in reasons


def test_a_form_without_a_pipeline_fills_versions_when_one_is_picked_and_offers_the_queue(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    shop, ledger = f"{unique_name}-shop", f"{unique_name}-ledger"
    approvals = {"required": 1, "approvers": [LEAD], "expire": "10m"}
    bot = start_bot(
        {
            "admins": [],
            "pipelines": {
                shop: web_pipeline("shop", approvals=approvals),
                ledger: web_pipeline("ledger", deployers=[DEV2]),
            },
        }
    )
    # DEV may deploy shop only (ledger has its own deployers): a one-pipeline form.
    only = opened_form(bot, emulator, "", user=DEV)
    assert options(only, "pipeline") == [(shop, shop)]
    # Anyone may not deploy what they may not deploy: the command's refusal, no form.
    refusal = answer(bot.slack.command("/deploy", ledger, user_id=DEV))
    assert f"You are not a deployer of `{ledger}`" in refusal

    view = opened_form(bot, emulator, "", user=DEV2)
    assert options(view, "pipeline") == [(ledger, ledger), (shop, shop)]
    assert not any(b.get("block_id") == "version" for b in view["blocks"])
    # No version block yet: submitting now is a field error on the pipeline.
    early = submit(
        bot,
        view,
        {"pipeline": {"pipeline": {"type": "static_select", "selected_option": None}}},
        user=DEV2,
    )
    assert early == {"response_action": "errors", "errors": {"pipeline": "Pick a pipeline."}}

    picked = bot.slack.view_block_action(view, "pipeline", selected=shop, user_id=DEV2)
    assert picked.status == 200
    view = filled(emulator, view["id"])
    assert ("1", "1") in options(view, "version")

    # shop is busy (a deploy awaits approval): the form's answer offers the queue.
    busy = answer(bot.slack.command("/deploy", f"{shop} 1", user_id=DEV))
    assert "needs approval" in busy
    body = submit(bot, view, choose(shop, "2"), user=DEV2)
    assert f"A rollout of `{shop}` is already in flight" in shown(body)
    answer_view = dict(body["view"], id=view["id"])
    pressed = bot.slack.view_block_action(answer_view, ActionId.deploy_queue, user_id=DEV2)
    assert pressed.status == 200
    queued = wait_until(
        lambda: [c for c in emulator.calls("views.update") if "Queued `2`" in str(c.body)],
        what="the queue's answer in the modal",
    )
    assert queued[-1].ok
    assert [(e.version, e.requested_by) for e in bot.ctx.store.queue(shop)] == [("2", DEV2)]


def test_what_changed_since_the_form_opened_is_a_field_error(
    start_bot: StartBot,
    web_pipeline: Any,
    unique_name: str,
    emulator: SlackEmulator,
    demo_images: Any,
    docker_client: Any,
) -> None:
    name, other = unique_name, f"{unique_name}-other"
    pipeline = web_pipeline()
    bot = start_bot(config(name, pipeline))
    vanishing = f"gone-{secrets.token_hex(3)}"
    docker_client.images.get(demo_images.ref("1")).tag(demo_images.repo, vanishing)
    try:
        view = filled(emulator, opened_form(bot, emulator, name)["id"])
        assert vanishing in [v for v, _ in options(view, "version")]
    finally:
        docker_client.images.remove(f"{demo_images.repo}:{vanishing}")
    body = submit(bot, view, choose(name, vanishing))
    assert body["response_action"] == "errors", body
    assert f"`{vanishing}` is no longer on the Docker engine" in body["errors"]["version"]
    # A version never offered (a forged submission) is refused the same way.
    forged = submit(bot, view, choose(name, "not-a-tag"))
    assert "no longer on the Docker engine" in forged["errors"]["version"]
    assert rollouts(bot, name) == []

    # The pipeline deleted from the config (the bot restarted with another file) since.
    bot.stop()
    again = start_bot(config(other, web_pipeline("other")))
    body = submit(again, view, choose(name, "1"))
    assert body["response_action"] == "errors", body
    assert f"`{name}` is no longer in the pipelines file" in body["errors"]["pipeline"]
    assert rollouts(again, name) == []


def test_an_expired_trigger_is_answered_and_nothing_happens(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    bot = start_bot(config(name, web_pipeline()))
    emulator.fail_next("views.open", "expired_trigger_id")
    text = answer(bot.slack.command("/deploy", name, user_id=DEV))
    assert "The deploy form could not open" in text and "`expired_trigger_id`" in text, text
    assert "`/deploy <pipeline> <version>`" in text
    assert emulator.calls("views.update") == [] and rollouts(bot, name) == []
    # An unknown pipeline is the command's own refusal, without a form.
    unknown = answer(bot.slack.command("/deploy", "nosuch", user_id=DEV))
    assert "There is no pipeline `nosuch`" in unknown
    # Someone who may deploy nothing from here is told so, without a form.
    outsider_bot_text = answer(
        bot.slack.command("/deploy", "", user_id=OUTSIDER, channel_id="C0ELSEWHERE")
    )
    assert "You may deploy none of the pipelines from this channel" in outsider_bot_text


def test_rollback_when_live_is_last_good_offers_the_earlier_good_versions(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    bot = start_bot(config(name, web_pipeline()))
    for version in ("1", "2"):
        reply = answer(bot.slack.command("/deploy", f"{name} {version}", user_id=DEV))
        assert wait_finished(bot, rollout_id_in(reply)).status is RolloutStatus.good

    emulator.fail_next("views.open", "expired_trigger_id")
    refusal = answer(bot.slack.command("/rollback", name, user_id=DEV))
    assert "is live and is already the last good version" in refusal and "(recent: `1`)" in refusal

    view = opened_form(bot, emulator, name, callback="rollback_form")
    assert options(view, "version") == [("1", "1")]
    text = shown(submit(bot, view, choose(name, "1")))
    assert f"Rolling `{name}` back to `1`" in text, text
    back = wait_finished(bot, rollout_id_in(text))
    assert back.kind.value == "rollback" and back.status is RolloutStatus.good
