"""Button listeners: approvals, the breach alert's rollback and five-whys buttons, a held
canary's promote and abort, the queue's buttons and the deploy form's pipeline select."""

from __future__ import annotations

from typing import Any

from slack_bolt import Ack, App, BoltContext, Respond
from slack_sdk import WebClient

from bot.domain.errors import ImmuneError
from bot.services import approvals, canary, incidents, queue
from bot.slack.forms import (
    build_answer_view,
    leave_button,
    pipeline_chosen,
    read_button,
    read_metadata,
    with_button,
)
from bot.slack.home import turn_page
from bot.slack.ids import ActionId, BlockId, InputActionId
from bot.slack.incident_messages import build_five_whys_modal
from bot.slack.replies import answer_text, error_text


def register(app: App) -> None:
    app.action(ActionId.deploy_approve.value)(approve)
    app.action(ActionId.deploy_reject.value)(reject)
    app.action(ActionId.rollback_confirm.value)(confirm_rollback)
    app.action(ActionId.five_whys_open.value)(open_five_whys)
    app.action(ActionId.canary_promote.value)(promote_canary)
    app.action(ActionId.canary_abort.value)(abort_canary)
    app.action(ActionId.home_previous.value)(home_page)
    app.action(ActionId.home_next.value)(home_page)
    app.action(ActionId.deploy_queue.value)(join_queue)
    app.action(ActionId.deploy_unqueue.value)(leave_queue)
    app.action(
        {"block_id": BlockId.form_pipeline.value, "action_id": InputActionId.pipeline.value}
    )(form_pipeline_chosen)


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


def _where(body: dict[str, Any]) -> str:
    """The channel a button was pressed for: the message's, or the form's it sits in."""
    view = body.get("view")
    if view:
        return str(read_metadata(view).get("channel", ""))
    return str((body.get("channel") or {}).get("id", ""))


def _show(
    body: dict[str, Any],
    client: WebClient,
    respond: Respond,
    text: str,
    blocks: list[dict[str, Any]] | None,
) -> None:
    """An answer to a press: in the modal it was pressed in, or ephemeral."""
    view = body.get("view")
    if view:
        client.views_update(view_id=view["id"], view=build_answer_view("Deploy queue", text))
    else:
        respond(text=text, blocks=blocks, response_type="ephemeral", replace_original=False)


def join_queue(
    ack: Ack, body: dict[str, Any], context: BoltContext, respond: Respond, client: WebClient
) -> None:
    """ "Queue it" on a refusal (busy, or outside the window)."""
    ack()
    user, value, request_id = _pressed(body)
    pipeline, version = read_button(value)
    try:
        queued = queue.join_queue(
            context["immune"],
            user=user,
            channel=_where(body),
            pipeline=pipeline,
            version=version,
            request_id=request_id,
        )
    except ImmuneError as error:
        if not body.get("view"):
            raise  # handlers/errors answers through the press's response_url
        _show(body, client, respond, error_text(error), None)
        return
    text = answer_text(queued.reply)
    _show(body, client, respond, text, with_button(text, leave_button(pipeline).to_dict()))


def leave_queue(
    ack: Ack, body: dict[str, Any], context: BoltContext, respond: Respond, client: WebClient
) -> None:
    ack()
    user, pipeline, request_id = _pressed(body)
    reply = queue.leave_queue(
        context["immune"], user=user, pipeline=pipeline.strip(), request_id=request_id
    )
    _show(body, client, respond, answer_text(reply), None)


def form_pipeline_chosen(
    ack: Ack, body: dict[str, Any], context: BoltContext, client: WebClient
) -> None:
    """The deploy form's pipeline select changed: its versions replace the old ones."""
    ack()
    chosen = (body["actions"][0].get("selected_option") or {}).get("value", "")
    pipeline_chosen(context["immune"], client, body["view"], str(chosen))
