"""The five whys: answers from a thread or a modal, kept with the incident."""

from __future__ import annotations

from typing import Any

from bot.context import Context


def build_modal(ctx: Context, incident_id: str) -> dict[str, Any]:
    """The five_whys modal, pre-filled with what is already recorded."""
    raise NotImplementedError("issue 4")


def record_modal(
    ctx: Context, *, incident_id: str, user: str, values: dict[str, Any]
) -> dict[str, str]:
    """Store the modal's answers; returns errors by block_id (empty when accepted)."""
    raise NotImplementedError("issue 4")


def record_thread_answer(
    ctx: Context,
    *,
    channel: str,
    thread_ts: str | None,
    user: str,
    text: str,
    ts: str,
    edited: bool,
    is_bot: bool,
) -> None:
    """A message in some thread: if it answers an incident's five whys, store it and reply."""
    raise NotImplementedError("issue 4")
