"""The one place errors become answers: ImmuneErrors as ephemeral replies, bugs as an error id."""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

from slack_bolt import App, BoltResponse
from slack_sdk.webhook import WebhookClient

from bot import metrics
from bot.domain.errors import ImmuneError
from bot.slack.replies import error_text


def register(app: App) -> None:
    app.error(on_error)


def user_text_for(error: Exception, logger: logging.Logger, asked: str = "") -> str:
    if isinstance(error, ImmuneError):
        # A refusal's one log line (its audit entry, if it has one, is logged at DEBUG only).
        logger.info("refused (%s) %s: %s", error.code, asked or "-", error.message)
        return error_text(error)
    error_id = secrets.token_hex(4)
    logger.error("unexpected error %s", error_id, exc_info=error)
    return f"Something went wrong on our side (error id `{error_id}`); nothing was changed. Tell the bot's operators."


def asked_by(body: dict[str, Any]) -> str:
    """Who asked what, for the log: `U123 /deploy web 1`, or `U123` for a button press."""
    user = str(body.get("user_id") or (body.get("user") or {}).get("id") or "")
    if "command" in body:
        return f"{user} {body['command']} {body.get('text') or ''}".strip()
    return user


def command_refusal(error: ImmuneError, command: dict[str, Any], logger: logging.Logger) -> str:
    """A slash command's refusal, answered by its listener's own ack: logged, counted, worded."""
    text = user_text_for(error, logger, asked_by(command))
    metrics.COMMANDS.labels(command=command["command"], outcome=error.code).inc()
    return text


def on_error(error: Exception, body: dict[str, Any], logger: logging.Logger) -> BoltResponse:
    text = user_text_for(error, logger, asked_by(body))
    code = error.code if isinstance(error, ImmuneError) else "internal"
    if "command" in body:
        metrics.COMMANDS.labels(command=body["command"], outcome=code).inc()
        payload = json.dumps({"response_type": "ephemeral", "text": text})
        return BoltResponse(status=200, body=payload, headers={"Content-Type": "application/json"})
    response_url = body.get("response_url")
    if response_url:
        # Button presses: the answer goes to the person who pressed, not the channel.
        WebhookClient(response_url, timeout=10).send(
            text=text, response_type="ephemeral", replace_original=False
        )
    return BoltResponse(status=200, body="")
