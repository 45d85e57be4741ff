"""Events API listeners: answers typed in a breach alert's thread, and the Home tab opened."""

from __future__ import annotations

from typing import Any

from slack_bolt import App, BoltContext
from slack_sdk import WebClient

from bot.services import five_whys
from bot.services.five_whys import ThreadMessage
from bot.slack.five_whys import parse_answers
from bot.slack.home import open_home


def register(app: App) -> None:
    app.event("message")(message)
    app.event("app_home_opened")(home_opened)


def home_opened(event: dict[str, Any], context: BoltContext, client: WebClient) -> None:
    """The Home tab opened (the Messages tab opens one too, ignored)."""
    if event.get("tab", "home") == "home" and event.get("user"):
        open_home(context["immune"], client, event["user"])


def message(event: dict[str, Any], context: BoltContext) -> None:
    """Thread replies (and their edits) that may be five-whys answers; others are ignored."""
    subtype = event.get("subtype")
    if subtype == "message_changed":
        posted, edited = event.get("message") or {}, True
    elif subtype in (None, "thread_broadcast"):
        posted, edited = event, False
    else:
        return
    text = posted.get("text", "")
    five_whys.record_thread_answer(
        context["immune"],
        ThreadMessage(
            channel=event.get("channel", ""),
            thread_ts=posted.get("thread_ts"),
            ts=posted.get("ts", ""),
            user=posted.get("user", ""),
            text=text,
            answers=parse_answers(text),
            edited=edited,
            is_bot=bool(posted.get("bot_id")),
        ),
    )
