"""Events API listeners: answers typed in a breach alert's thread."""

from __future__ import annotations

from typing import Any

from slack_bolt import App, BoltContext

from bot.services import five_whys


def register(app: App) -> None:
    app.event("message")(message)


def message(event: dict[str, Any], context: BoltContext) -> None:
    """Thread replies (and their edits) that may be five-whys answers; others are ignored."""
    subtype = event.get("subtype")
    if subtype == "message_changed":
        edited = event.get("message") or {}
        channel = event.get("channel", "")
        five_whys.record_thread_answer(
            context["immune"],
            channel=channel,
            thread_ts=edited.get("thread_ts"),
            user=edited.get("user", ""),
            text=edited.get("text", ""),
            ts=edited.get("ts", ""),
            edited=True,
            is_bot=bool(edited.get("bot_id")),
        )
        return
    if subtype not in (None, "thread_broadcast"):
        return
    five_whys.record_thread_answer(
        context["immune"],
        channel=event.get("channel", ""),
        thread_ts=event.get("thread_ts"),
        user=event.get("user", ""),
        text=event.get("text", ""),
        ts=event.get("ts", ""),
        edited=False,
        is_bot=bool(event.get("bot_id")),
    )
