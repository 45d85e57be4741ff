"""Modal submissions: the five-whys form, and the deploy and rollback forms."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import Ack, App, BoltContext

from bot import metrics
from bot.domain.errors import (
    AlreadyLive,
    BadVersion,
    ImageNotFound,
    ImmuneError,
    UnknownPipeline,
)
from bot.services import five_whys, forms
from bot.slack.five_whys import form_answers, form_errors
from bot.slack.forms import build_answer_view, field_errors, read_submission
from bot.slack.ids import CallbackId
from bot.slack.replies import answer_text
from handlers.errors import user_text_for

# Refusals that are about one field of the form: shown on it, the form stays open.
FIELD_OF: dict[type[ImmuneError], str] = {
    UnknownPipeline: "pipeline",
    BadVersion: "version",
    ImageNotFound: "version",
    AlreadyLive: "version",
}


def register(app: App) -> None:
    app.view(CallbackId.five_whys.value)(submit_five_whys)
    app.view(CallbackId.deploy_form.value)(submit_deploy_form)
    app.view(CallbackId.rollback_form.value)(submit_deploy_form)


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


def submit_deploy_form(
    ack: Ack,
    body: dict[str, Any],
    view: dict[str, Any],
    context: BoltContext,
    logger: logging.Logger,
) -> None:
    """The form's choice takes /deploy's (or /rollback's) own path; a field that is wrong now
    gets its error in the form, any other refusal replaces the form with the answer."""
    ctx = context["immune"]
    submitted = read_submission(body, view)
    command = f"/{submitted.kind}"
    problems = forms.check_submission(ctx, submitted)
    if problems:
        logger.info("form refused (%s) %s: %s", submitted.kind, submitted.user, problems)
        metrics.COMMANDS.labels(command=command, outcome="form_field_error").inc()
        ack(response_action="errors", errors=field_errors(problems, view))
        return
    title = "Deploy" if submitted.kind == "deploy" else "Roll back"
    try:
        reply = forms.submit(ctx, submitted)
    except ImmuneError as error:
        asked = f"{submitted.user} {command} {submitted.pipeline} {submitted.version} (form)"
        text = user_text_for(error, logger, asked)
        metrics.COMMANDS.labels(command=command, outcome=error.code).inc()
        field = next((f for kind, f in FIELD_OF.items() if isinstance(error, kind)), None)
        if field is not None:
            ack(response_action="errors", errors=field_errors({field: text}, view))
            return
        view_out = build_answer_view(
            title, text, error.queue_offer, metadata=view.get("private_metadata", "")
        )
        ack(response_action="update", view=view_out.to_dict())
        return
    metrics.COMMANDS.labels(command=command, outcome="ok").inc()
    ack(response_action="update", view=build_answer_view(title, answer_text(reply)).to_dict())
