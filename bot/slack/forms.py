"""The deploy and rollback modals, and the "Queue it" / "Leave the queue" buttons.

A modal is opened (`views.open`) before anything slow is asked, inside the trigger's 3 s; the
engine's versions are filled in afterwards with `views.update`. A submission answers with
`response_action: errors` for a field that is wrong now, or `update` to a view saying what
happened (with "Queue it" when the pipeline was busy or shut).
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import Any, cast

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    InputBlock,
    MarkdownTextObject,
    Option,
    PlainTextInputElement,
    SectionBlock,
    StaticSelectElement,
)
from slack_sdk.models.views import View

from bot.domain.text import shorten
from bot.services import forms
from bot.services.context import Context
from bot.services.forms import DeployForm, Submitted
from bot.services.requests import CommandRequest
from bot.slack.ids import ActionId, BlockId, CallbackId, InputActionId
from bot.slack.messages import SECTION_TEXT_LIMIT
from bot.slack.render import escape

logger = logging.getLogger(__name__)

OPTION_TEXT_LIMIT = 75


class FormNotOpened(Exception):
    """Slack would not open the modal (`error`: e.g. `expired_trigger_id`)."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


def _metadata(form: DeployForm) -> str:
    return json.dumps({"kind": form.kind, "channel": form.channel, "pipelines": form.pipelines})


def read_metadata(view: dict[str, Any]) -> dict[str, Any]:
    try:
        data = json.loads(view.get("private_metadata") or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _option(value: str, text: str) -> Option:
    return Option(value=value, text=shorten(text, OPTION_TEXT_LIMIT))


def build_form(form: DeployForm) -> View:
    """The modal for `form`: a pipeline select (dispatching its choice), a version select
    once the versions are known, and an optional reason."""
    deploy = form.kind == "deploy"
    pipelines = [_option(name, name) for name in form.pipelines]
    chosen = next((o for o in pipelines if o.value == form.chosen), None)
    blocks: list[Block] = [
        InputBlock(
            block_id=BlockId.form_pipeline,
            label="Pipeline",
            dispatch_action=deploy and len(pipelines) > 1,
            element=StaticSelectElement(
                action_id=InputActionId.pipeline,
                placeholder="Pick a pipeline",
                options=pipelines,
                initial_option=chosen,
            ),
        )
    ]
    if form.chosen is None:
        blocks.append(
            ContextBlock(elements=[MarkdownTextObject(text="Pick a pipeline to see its versions.")])
        )
    elif not form.versions_known:
        blocks.append(
            ContextBlock(
                elements=[MarkdownTextObject(text="Asking the engine which versions it holds…")]
            )
        )
    elif form.problem:
        blocks.append(SectionBlock(text=MarkdownTextObject(text=escape(form.problem))))
    else:
        blocks.append(
            InputBlock(
                block_id=BlockId.form_version,
                label="Version" if deploy else "Earlier good version",
                hint="Newest first." if deploy else "The most recent first.",
                element=StaticSelectElement(
                    action_id=InputActionId.version,
                    placeholder="Pick a version",
                    options=[
                        _option(v.version, f"{v.version} (live)" if v.live else v.version)
                        for v in form.versions
                    ],
                ),
            )
        )
    if deploy:
        blocks.append(
            InputBlock(
                block_id=BlockId.form_reason,
                label="Reason",
                optional=True,
                element=PlainTextInputElement(action_id=InputActionId.answer, max_length=500),
            )
        )
    return View(
        type="modal",
        callback_id=CallbackId.deploy_form if deploy else CallbackId.rollback_form,
        title="Deploy" if deploy else "Roll back",
        submit="Deploy" if deploy else "Roll back",
        close="Cancel",
        private_metadata=_metadata(form),
        blocks=blocks,
    )


def build_answer_view(
    title: str, text: str, queue_offer: tuple[str, str] | None = None, metadata: str = ""
) -> View:
    """What a submission (or a button in it) led to, in place of the form (`metadata`: the
    form's, so a button here knows the channel the form was opened in)."""
    blocks: list[Block] = [
        SectionBlock(text=MarkdownTextObject(text=shorten(text, SECTION_TEXT_LIMIT)))
    ]
    if queue_offer is not None:
        blocks.append(queue_button(*queue_offer))
    return View(
        type="modal", title=title, close="Close", blocks=blocks, private_metadata=metadata or None
    )


def queue_button(pipeline: str, version: str) -> ActionsBlock:
    return ActionsBlock(
        block_id=BlockId.queue_actions,
        elements=[
            ButtonElement(
                text="Queue it",
                action_id=ActionId.deploy_queue,
                value=f"{pipeline} {version}",
                style="primary",
            )
        ],
    )


def leave_button(pipeline: str) -> ActionsBlock:
    return ActionsBlock(
        block_id=BlockId.queue_actions,
        elements=[
            ButtonElement(text="Leave the queue", action_id=ActionId.deploy_unqueue, value=pipeline)
        ],
    )


def queue_offer(pipeline: str, version: str) -> dict[str, Any]:
    """`queue_button` as Block Kit JSON, a fresh copy each time. A busy pipeline refuses every
    deploy with this offer, and slack_sdk's validation of the button was most of what the
    refusal cost beyond its Redis work (about 0.08 ms of 0.5): it is built and validated
    once per pipeline and version."""
    return cast(dict[str, Any], json.loads(_queue_offer_json(pipeline, version)))


@lru_cache(maxsize=256)
def _queue_offer_json(pipeline: str, version: str) -> str:
    return json.dumps(queue_button(pipeline, version).to_dict())


def with_button(text: str, button: dict[str, Any]) -> list[dict[str, Any]]:
    """An ephemeral answer's blocks: its text, then the button (Block Kit JSON)."""
    section = SectionBlock(text=MarkdownTextObject(text=shorten(text, SECTION_TEXT_LIMIT)))
    return [section.to_dict(), button]


def read_button(value: str) -> tuple[str, str]:
    """`deploy_queue`'s value: "pipeline version"."""
    pipeline, _, version = value.strip().partition(" ")
    return pipeline, version.strip()


# Opening and filling the modal -------------------------------------------------------------


def open_form(client: WebClient, trigger_id: str, form: DeployForm) -> dict[str, Any]:
    """views.open; FormNotOpened when Slack refuses (an expired trigger, a bad view)."""
    try:
        response = client.views_open(trigger_id=trigger_id, view=build_form(form))
    except SlackApiError as error:
        code = str(error.response.get("error") or "unknown")
        logger.warning("could not open the %s form: %s", form.kind, code)
        raise FormNotOpened(code) from error
    view: dict[str, Any] = response["view"]
    return view


def fill_versions(ctx: Context, client: WebClient, form: DeployForm, view: dict[str, Any]) -> None:
    """Ask the engine for the versions (after the modal opened) and show them."""
    if form.chosen is None or form.versions_known:
        return
    filled = forms.with_versions(ctx, form)
    try:
        client.views_update(view_id=view["id"], hash=view.get("hash"), view=build_form(filled))
    except SlackApiError as error:
        # The person changed the form meanwhile (hash_conflict) or closed it: nothing to show.
        logger.info("did not fill the deploy form's versions: %s", error.response.get("error"))


def open_deploy_form(
    ctx: Context, client: WebClient, request: CommandRequest, trigger_id: str
) -> None:
    form = forms.deploy_form(ctx, request)
    view = open_form(client, trigger_id, form)
    fill_versions(ctx, client, form, view)


def open_rollback_form(
    ctx: Context, client: WebClient, request: CommandRequest, trigger_id: str, pipeline: str
) -> None:
    open_form(client, trigger_id, forms.rollback_form(ctx, request, pipeline))


def pipeline_chosen(ctx: Context, client: WebClient, view: dict[str, Any], name: str) -> None:
    """The pipeline select changed: show that pipeline's versions."""
    data = read_metadata(view)
    form = DeployForm(
        "deploy", str(data.get("channel", "")), [str(p) for p in data.get("pipelines", [])]
    )
    form = forms.with_versions(ctx, forms.choose_pipeline(ctx, form, name))
    try:
        client.views_update(view_id=view["id"], hash=view.get("hash"), view=build_form(form))
    except SlackApiError as error:
        logger.info("did not update the deploy form: %s", error.response.get("error"))


# Reading a submission ---------------------------------------------------------------------


def _selected(values: dict[str, Any], block: str, action: str) -> str:
    element = (values.get(block) or {}).get(action) or {}
    option = element.get("selected_option") or {}
    return str(option.get("value") or element.get("value") or "").strip()


def read_submission(body: dict[str, Any], view: dict[str, Any]) -> Submitted:
    values = (view.get("state") or {}).get("values") or {}
    data = read_metadata(view)
    reason = ((values.get(BlockId.form_reason) or {}).get(InputActionId.answer) or {}).get("value")
    kind = "rollback" if view.get("callback_id") == CallbackId.rollback_form else "deploy"
    pipeline = _selected(values, BlockId.form_pipeline, InputActionId.pipeline)
    version = _selected(values, BlockId.form_version, InputActionId.version)
    # One submission of one view with these values: Slack's retries and a double click share
    # it; a corrected resubmission (after a field error) does not.
    request_id = f"{view.get('id', '')}:{pipeline}:{version}"
    return Submitted(
        kind=kind,
        user=body["user"]["id"],
        channel=str(data.get("channel", "")),
        pipeline=pipeline,
        version=version,
        reason=str(reason or "").strip(),
        request_id=request_id,
    )


def field_errors(errors: dict[str, str], view: dict[str, Any]) -> dict[str, str]:
    """Errors keyed by the block ids the view has (Slack refuses others): a missing version
    block (no versions were listed) puts its error on the pipeline."""
    present = {b.get("block_id") for b in view.get("blocks") or []}
    shown: dict[str, str] = {}
    for name, message in errors.items():
        block = BlockId.form_version if name == "version" else BlockId.form_pipeline
        if block not in present:
            block = BlockId.form_pipeline
        shown[block] = message
    return shown


def not_opened_text(kind: str, error: str) -> str:
    """The ephemeral answer when Slack would not open a form."""
    typed = (
        "`/deploy <pipeline> <version>`" if kind == "deploy" else "`/rollback <pipeline> <version>`"
    )
    if error in ("expired_trigger_id", "exchanged_trigger_id"):
        why = f"Slack allows 3 s to open it and said `{error}`"
    else:
        why = f"Slack said `{error}`"
    return f"The {kind} form could not open ({why}); nothing was changed. Run the command again, or type {typed}."
