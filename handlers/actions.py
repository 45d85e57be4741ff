"""Button listeners: approvals, the breach alert's rollback and five-whys buttons, and a held
canary's promote and abort."""

from __future__ import annotations

from typing import Any

from slack_bolt import Ack, App, BoltContext, Respond
from slack_sdk import WebClient

from bot.services import approvals, canary, incidents
from bot.slack.home import turn_page
from bot.slack.ids import ActionId
from bot.slack.incident_messages import build_five_whys_modal
from bot.slack.replies import answer_text


def register(app: App) -> None:
    app.action(ActionId.deploy_approve.value)(approve)
    app.action(ActionId.deploy_reject.value)(reject)
    app.action(ActionId.rollback_confirm.value)(confirm_rollback)
    app.action(ActionId.five_whys_open.value)(open_five_whys)
    app.action(ActionId.canary_promote.value)(promote_canary)
    app.action(ActionId.canary_abort.value)(abort_canary)
    app.action(ActionId.home_previous.value)(home_page)
    app.action(ActionId.home_next.value)(home_page)


def _pressed(body: dict[str, Any]) -> tuple[str, str, str]:
    """(user id, button value, a request id that is the same on Slack's retries)."""
    action = body["actions"][0]
    request_id = f"{body.get('trigger_id', '')}:{action.get('action_ts', '')}"
    return body["user"]["id"], action.get("value", ""), request_id


def approve(ack: Ack, body: dict[str, Any], context: BoltContext, respond: Respond) -> None:
    ack()
    user, rollout_id, request_id = _pressed(body)
    reply = approvals.decide(context["immune"], rollout_id, user, "approved", request_id)
    respond(text=answer_text(reply), response_type="ephemeral", replace_original=False)


def reject(ack: Ack, body: dict[str, Any], context: BoltContext, respond: Respond) -> None:
    ack()
    user, rollout_id, request_id = _pressed(body)
    reply = approvals.decide(context["immune"], rollout_id, user, "rejected", request_id)
    respond(text=answer_text(reply), response_type="ephemeral", replace_original=False)


def confirm_rollback(
    ack: Ack, body: dict[str, Any], context: BoltContext, respond: Respond
) -> None:
    ack()
    user, incident_id, request_id = _pressed(body)
    reply = incidents.confirm_rollback(context["immune"], incident_id, user, request_id)
    respond(text=answer_text(reply), response_type="ephemeral", replace_original=False)


def promote_canary(ack: Ack, body: dict[str, Any], context: BoltContext, respond: Respond) -> None:
    ack()
    user, rollout_id, request_id = _pressed(body)
    reply = canary.decide(context["immune"], rollout_id, user, canary.PROMOTE, request_id)
    respond(text=answer_text(reply), response_type="ephemeral", replace_original=False)


def abort_canary(ack: Ack, body: dict[str, Any], context: BoltContext, respond: Respond) -> None:
    ack()
    user, rollout_id, request_id = _pressed(body)
    reply = canary.decide(context["immune"], rollout_id, user, canary.ABORT, request_id)
    respond(text=answer_text(reply), response_type="ephemeral", replace_original=False)


def open_five_whys(ack: Ack, body: dict[str, Any], context: BoltContext, client: WebClient) -> None:
    ack()
    _, incident_id, _ = _pressed(body)
    incident = incidents.load_incident(context["immune"].store, incident_id)
    client.views_open(trigger_id=body["trigger_id"], view=build_five_whys_modal(incident))


def home_page(ack: Ack, body: dict[str, Any], context: BoltContext, client: WebClient) -> None:
    """Previous / Next on the Home tab: the page is kept for the tab's later refreshes."""
    ack()
    user, page, _ = _pressed(body)
    turn_page(context["immune"], client, user, int(page) if page.isdigit() else 0)
