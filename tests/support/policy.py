"""Helpers for the policy scenarios: who may ship, when, and exactly once.

People and channels are fixed ids; pipelines are named after the test's `unique_name`, so the
engine's `immune.pipeline` labels never meet another test's.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from bot.domain.models import AuditEntry, Rollout, RolloutStatus
from tests.support.bot_harness import InProcessBot, wait_until
from tests.support.slack_client import SlackHttpResponse
from tests.support.slack_emulator import SlackEmulator

ADMIN = "U0ADMIN"
DEV = "U0DEV1"
DEV2 = "U0DEV2"
LEAD = "U0LEAD1"
LEAD2 = "U0LEAD2"
OUTSIDER = "U0OUTSIDER"
OTHER_CHANNEL = "C0OTHER"
LONDON = ZoneInfo("Europe/London")

ROLLOUT_ID = re.compile(r"\br-\d{8}-[0-9a-f]{6}\b")


def config(name: str, pipeline: dict[str, Any], **top: Any) -> dict[str, Any]:
    """A pipelines file with one pipeline, admins [ADMIN] and London time unless overridden."""
    return {
        "timezone": "Europe/London",
        "admins": [ADMIN],
        **top,
        "pipelines": {name: pipeline},
    }


def london(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    """Epoch seconds of a London wall-clock time: london(2025, 3, 28, 10, 0)."""
    return datetime(year, month, day, hour, minute, tzinfo=LONDON).timestamp()


def answer(reply: SlackHttpResponse) -> str:
    """The ephemeral answer in a slash command's ack; fails on anything else."""
    assert reply.status == 200, (reply.status, reply.text)
    body = reply.json()
    assert body.get("response_type") == "ephemeral", body
    text = body.get("text")
    assert isinstance(text, str) and text.strip(), body
    return text


def rollout_id_in(text: str) -> str:
    found = ROLLOUT_ID.search(text)
    assert found, f"no rollout id in {text!r}"
    return found.group(0)


def rollouts(bot: InProcessBot, pipeline: str) -> list[Rollout]:
    return list(bot.ctx.store.recent_rollouts(pipeline, 100))


def audit(bot: InProcessBot, pipeline: str) -> list[AuditEntry]:
    """The pipeline's audit entries, oldest first."""
    return list(reversed(bot.ctx.store.audit_entries(pipeline=pipeline, limit=1000)))


def wait_for_status(
    bot: InProcessBot, rollout_id: str, *statuses: RolloutStatus, timeout: float = 40.0
) -> Rollout:
    def reached() -> Rollout | None:
        rollout: Rollout | None = bot.ctx.store.rollout(rollout_id)
        return rollout if rollout is not None and rollout.status in statuses else None

    found: Rollout = wait_until(reached, timeout, what=f"{rollout_id} to be {statuses}")
    return found


def wait_finished(bot: InProcessBot, rollout_id: str, timeout: float = 40.0) -> Rollout:
    def done() -> Rollout | None:
        rollout: Rollout | None = bot.ctx.store.rollout(rollout_id)
        if rollout is None or rollout.status.in_flight_states:
            return None
        # Finished, and its worker let go of the pipeline: the next rollout may start.
        if bot.ctx.store.pipeline(rollout.pipeline).inflight_rollout == rollout_id:
            return None
        return rollout

    found: Rollout = wait_until(done, timeout, what=f"{rollout_id} to finish")
    return found


def action_ids(message: dict[str, Any] | None) -> list[str]:
    assert message is not None, "no such message"
    return [
        element.get("action_id", "")
        for block in message.get("blocks") or []
        if block.get("type") == "actions"
        for element in block.get("elements", [])
    ]


def approval_message(bot: InProcessBot, emulator: SlackEmulator, rollout_id: str) -> Any:
    """The approval request of `rollout_id` as it now stands in the pipeline's channel."""

    def find() -> dict[str, Any] | None:
        rollout = bot.ctx.store.rollout(rollout_id)
        if rollout is None or not rollout.approval_ts:
            return None
        found: dict[str, Any] | None = emulator.message(rollout.channel, rollout.approval_ts)
        return found

    return wait_until(find, 10, what=f"the approval request of {rollout_id}")


def message_text(message: dict[str, Any] | None) -> str:
    """Everything a person reads in a message: its text and the text of its blocks."""
    assert message is not None, "no such message"
    parts = [message.get("text", "")]
    for block in message.get("blocks") or []:
        text = block.get("text")
        if isinstance(text, dict):
            parts.append(text.get("text", ""))
        for element in block.get("elements") or []:
            if isinstance(element.get("text"), str):
                parts.append(element["text"])
    return "\n".join(parts)


def press(
    bot: InProcessBot, message: dict[str, Any], action_id: str, user: str, **options: Any
) -> SlackHttpResponse:
    """Press a button on `message` as this copy of it shows it (a stale copy, if it is one)."""
    reply = bot.slack.block_action(
        action_id, message_ts=message["ts"], user_id=user, message=message, **options
    )
    assert reply.status == 200, (reply.status, reply.text)
    return reply


def button_answer(emulator: SlackEmulator, reply: SlackHttpResponse, count: int = 1) -> str:
    """What the person who pressed was told (ephemerally, through the press's response_url)."""
    url = reply.response_url
    assert url is not None
    posts = emulator.wait_for_response(id=url, count=count)
    body = posts[-1].body
    assert body.get("response_type", "ephemeral") == "ephemeral", body
    assert body.get("replace_original") in (None, False), body
    return str(body.get("text", ""))
