"""Slash command listeners: build a CommandRequest, call the domain, ack with its reply."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from slack_bolt import Ack, App, BoltContext

from bot import metrics
from bot.services import commands, halts
from bot.services.commands import CommandRequest, Reply
from bot.services.context import Context

Operation = Callable[[Context, CommandRequest], Reply]


def register(app: App) -> None:
    app.command("/deploy")(deploy)
    app.command("/rollback")(rollback)
    app.command("/halt")(halt)
    app.command("/resume")(resume)
    app.command("/pipeline")(pipeline)


def request_from(command: dict[str, Any]) -> CommandRequest:
    return CommandRequest(
        command=command["command"],
        text=command.get("text") or "",
        user_id=command["user_id"],
        channel_id=command.get("channel_id", ""),
        response_url=command.get("response_url"),
        request_id=command.get("trigger_id"),
    )


def answer(ack: Ack, command: dict[str, Any], context: BoltContext, operation: Operation) -> None:
    reply = operation(context["immune"], request_from(command))
    ack(text=reply.text, response_type="in_channel" if reply.public else "ephemeral")
    metrics.COMMANDS.labels(command=command["command"], outcome="ok").inc()


def deploy(ack: Ack, command: dict[str, Any], context: BoltContext) -> None:
    answer(ack, command, context, commands.deploy)


def rollback(ack: Ack, command: dict[str, Any], context: BoltContext) -> None:
    answer(ack, command, context, commands.rollback)


def halt(ack: Ack, command: dict[str, Any], context: BoltContext) -> None:
    answer(ack, command, context, halts.halt)


def resume(ack: Ack, command: dict[str, Any], context: BoltContext) -> None:
    answer(ack, command, context, halts.resume)


def pipeline(ack: Ack, command: dict[str, Any], context: BoltContext) -> None:
    answer(ack, command, context, commands.pipeline_command)
