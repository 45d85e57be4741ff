"""Slash command listeners: build a CommandRequest, call the use case, ack with its answer."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from slack_bolt import Ack, App, BoltContext
from slack_sdk import WebClient

from bot import metrics
from bot.domain.errors import ImmuneError
from bot.services import deploys, forms, halts, status
from bot.services.context import Context
from bot.services.requests import CommandRequest
from bot.services.status import PipelineAnswer
from bot.slack.forms import (
    FormNotOpened,
    not_opened_text,
    open_deploy_form,
    open_rollback_form,
    queue_offer,
    with_button,
)
from bot.slack.replies import answer_text
from handlers.errors import command_refusal

Operation = Callable[[Context, CommandRequest], PipelineAnswer]

OPERATIONS: dict[str, Operation] = {
    "/deploy": deploys.deploy,
    "/rollback": deploys.rollback,
    "/halt": halts.halt,
    "/resume": halts.resume,
    "/pipeline": status.pipeline_command,
}


def register(app: App) -> None:
    # One listener for every command: bolt tries its listeners one after another and each
    # try builds its whole set of injectable arguments, so with one listener per command
    # `/pipeline` (the fifth) paid for four tries before its own.
    app.command(re.compile("^(?:" + "|".join(map(re.escape, OPERATIONS)) + ")$"))(slash_command)


def slash_command(
    ack: Ack,
    command: dict[str, Any],
    context: BoltContext,
    logger: logging.Logger,
    client: WebClient,
) -> None:
    if forms.wants_form(command["command"], command.get("text") or ""):
        deploy_form(ack, command, context, logger, client)
        return
    answer(ack, command, context, OPERATIONS[command["command"]], logger, client)


def deploy_form(
    ack: Ack,
    command: dict[str, Any],
    context: BoltContext,
    logger: logging.Logger,
    client: WebClient,
) -> None:
    """`/deploy` or `/deploy web`: the form opens first, its versions are filled after."""
    try:
        open_deploy_form(context["immune"], client, request_from(command), command["trigger_id"])
    except ImmuneError as error:
        ack(text=command_refusal(error, command, logger), response_type="ephemeral")
        return
    except FormNotOpened as failed:
        ack(text=not_opened_text("deploy", failed.error), response_type="ephemeral")
        metrics.COMMANDS.labels(command=command["command"], outcome="form_not_opened").inc()
        return
    ack()
    metrics.COMMANDS.labels(command=command["command"], outcome="form").inc()


def request_from(command: dict[str, Any]) -> CommandRequest:
    return CommandRequest(
        command=command["command"],
        text=command.get("text") or "",
        user_id=command["user_id"],
        channel_id=command.get("channel_id", ""),
        response_url=command.get("response_url"),
        request_id=command.get("trigger_id"),
    )


def answer(
    ack: Ack,
    command: dict[str, Any],
    context: BoltContext,
    operation: Operation,
    logger: logging.Logger,
    client: WebClient,
) -> None:
    """Every answer is ephemeral: only the person who typed the command sees it."""
    request = request_from(command)
    try:
        reply = operation(context["immune"], request)
    except ImmuneError as error:
        # A refusal is the listener's own answer: raised on to bolt's error handler, it would
        # cost bolt another round of argument building. The words are handlers/errors' still.
        text = command_refusal(error, command, logger)
        if error.pick_version_of is not None:
            try:
                open_rollback_form(
                    context["immune"], client, request, command["trigger_id"], error.pick_version_of
                )
            except FormNotOpened:
                pass  # the refusal names the recent versions to type instead
            else:
                ack()
                return
        if error.queue_offer is not None:
            ack(
                text=text,
                blocks=with_button(text, queue_offer(*error.queue_offer)),
                response_type="ephemeral",
            )
            return
        ack(text=text, response_type="ephemeral")
        return
    ack(text=answer_text(reply), response_type="ephemeral")
    metrics.COMMANDS.labels(command=command["command"], outcome="ok").inc()
