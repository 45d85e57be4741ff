"""Who did what, when, from which command, with which outcome: history and the Markdown export."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bot.domain.clock import FrozenClock
from bot.domain.models import RolloutStatus
from bot.slack.ids import ActionId
from tests.support.bot_harness import InProcessBot
from tests.support.policy import (
    DEV,
    LEAD,
    OUTSIDER,
    answer,
    approval_message,
    config,
    london,
    press,
    rollout_id_in,
    wait_finished,
)
from tests.support.slack_emulator import SlackEmulator

pytestmark = pytest.mark.docker

StartBot = Callable[..., InProcessBot]
NOW = london(2025, 6, 4, 10, 0)  # Wednesday 10:00 BST


def table_rows(markdown: str, section: str = "## Who did what") -> list[list[str]]:
    """The rows of the table under `section` (its heading line starts with that)."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(section))
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if line.startswith("| 20"):
            rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def test_history_and_export_show_who_did_what_when_and_how_it_ended(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: SlackEmulator
) -> None:
    name = unique_name
    approvals = {"approvers": [LEAD], "expire": "30m"}
    clock = FrozenClock(NOW)
    bot = start_bot(config(name, web_pipeline(deployers=[DEV], approvals=approvals)), clock=clock)

    answer(bot.slack.command("/deploy", f"{name} 1", user_id=OUTSIDER))
    clock.advance(60)
    asked = answer(bot.slack.command("/deploy", f"{name} 1", user_id=DEV))
    rollout_id = rollout_id_in(asked)
    clock.advance(60)
    press(bot, approval_message(bot, emulator, rollout_id), ActionId.deploy_approve.value, LEAD)
    assert wait_finished(bot, rollout_id).status is RolloutStatus.good

    history = answer(bot.slack.command("/pipeline", f"history {name}", user_id=OUTSIDER))
    assert f"*History of {name}*" in history
    assert f"deploy `1` by <@{DEV}>: live and good" in history
    assert f"<@{OUTSIDER}> deploy: refused (not_a_deployer) · `/deploy {name} 1`" in history
    assert f"<@{DEV}> deploy: awaiting_approval" in history
    assert f"<@{LEAD}> approve: approved" in history
    assert f"<!date^{int(NOW)}^" in history

    exported = answer(bot.slack.command("/pipeline", f"audit {name}", user_id=OUTSIDER))
    assert exported.startswith("```\n# Audit trail of") and exported.endswith("\n```")
    [rollout_row] = table_rows(exported, "## Rollouts")
    assert rollout_row == [
        "2025-06-04 10:01:00 BST",
        "deploy",
        "1",
        DEV,
        "good",
        f"approved by {LEAD}",
        rollout_id,
    ]
    # Newest first; oldest: the refusal, the request, the approval, then what the bot did.
    rows = [tuple(row[:5]) for row in reversed(table_rows(exported))]
    assert rows[:3] == [
        ("2025-06-04 10:00:00 BST", OUTSIDER, "deploy", "refused", f"/deploy {name} 1"),
        ("2025-06-04 10:01:00 BST", DEV, "deploy", "awaiting_approval", f"/deploy {name} 1"),
        ("2025-06-04 10:02:00 BST", LEAD, "approve", "approved", "approve button"),
    ]
    assert ("immune", "deploy.live", "good") in [row[1:4] for row in rows]

    unknown = answer(bot.slack.command("/pipeline", "audit nosuch", user_id=OUTSIDER))
    assert "There is no pipeline `nosuch`" in unknown


def test_the_trail_is_capped_by_age_through_the_bot(
    start_bot: StartBot, web_pipeline: Any, unique_name: str
) -> None:
    name = unique_name
    clock = FrozenClock(NOW)
    bot = start_bot(config(name, web_pipeline(deployers=[DEV])), clock=clock, audit_max_age_days=2)

    answer(bot.slack.command("/deploy", f"{name} 1", user_id=OUTSIDER))
    clock.advance(86400)
    answer(bot.slack.command("/deploy", f"{name} 2", user_id=OUTSIDER))
    exported = answer(bot.slack.command("/pipeline", f"audit {name}", user_id=DEV))
    assert "keeps 2 days" in exported
    assert len(table_rows(exported)) == 2

    clock.advance(86400 + 1)  # the first refusal is now more than two days old
    answer(bot.slack.command("/deploy", f"{name} 3", user_id=OUTSIDER))
    exported = answer(bot.slack.command("/pipeline", f"audit {name}", user_id=DEV))
    commands = [row[4] for row in table_rows(exported)]
    assert commands == [f"/deploy {name} 3", f"/deploy {name} 2"]
    assert "Only the newest" not in exported
