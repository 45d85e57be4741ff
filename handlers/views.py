"""Modal submissions: the five-whys form."""

from __future__ import annotations

from typing import Any

from slack_bolt import Ack, App, BoltContext

from bot.services import five_whys
from bot.slack.five_whys import form_answers, form_errors
from bot.slack.ids import CallbackId


def register(app: App) -> None:
    app.view(CallbackId.five_whys.value)(submit_five_whys)


def submit_five_whys(
    ack: Ack, body: dict[str, Any], view: dict[str, Any], context: BoltContext
) -> None:
    errors = five_whys.record_form(
        context["immune"],
        incident_id=view.get("private_metadata", ""),
        user=body["user"]["id"],
        submitted=form_answers(view.get("state", {}).get("values", {})),
    )
    if errors:
        ack(response_action="errors", errors=form_errors(errors))
    else:
        ack()
