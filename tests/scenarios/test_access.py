"""Who may ship: deployers, admins, channels; every refusal explained and audited.

Everything goes through the bot's signed endpoint, and the deploys that are allowed really run
the demo image on the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.domain.clock import FrozenClock
from bot.domain.models import RolloutStatus
from tests.support.bot_harness import CHANNEL, InProcessBot
from tests.support.policy import (
    ADMIN,
    DEV,
    DEV2,
    OTHER_CHANNEL,
    OUTSIDER,
    answer,
    audit,
    config,
    london,
    rollout_id_in,
    rollouts,
    wait_finished,
)

pytestmark = pytest.mark.docker

StartBot = Callable[..., InProcessBot]


def deploy_and_finish(bot: InProcessBot, text: str, user: str) -> None:
    reply = answer(bot.slack.command("/deploy", text, user_id=user))
    assert reply.startswith("Deploying"), reply
    rollout = wait_finished(bot, rollout_id_in(reply))
    assert rollout.status is RolloutStatus.good, rollout.error


def test_deployers_may_deploy_and_roll_back(
    start_bot: StartBot, web_pipeline: Any, unique_name: str
) -> None:
    name = unique_name
    bot = start_bot(config(name, web_pipeline(deployers=[DEV, DEV2])))

    deploy_and_finish(bot, f"{name} 1", DEV)
    deploy_and_finish(bot, f"{name} 2", DEV2)
    reply = answer(bot.slack.command("/rollback", f"{name} 1", user_id=DEV))
    assert reply.startswith(f"Rolling `{name}` back to `1`"), reply
    assert wait_finished(bot, rollout_id_in(reply)).status is RolloutStatus.good

    accepted = [e for e in audit(bot, name) if e.outcome == "accepted"]
    assert [(e.actor, e.action, e.command) for e in accepted] == [
        (DEV, "deploy", f"/deploy {name} 1"),
        (DEV2, "deploy", f"/deploy {name} 2"),
        (DEV, "rollback", f"/rollback {name} 1"),
    ]


def test_someone_else_is_refused_told_who_can_help_and_audited(
    start_bot: StartBot, web_pipeline: Any, unique_name: str
) -> None:
    name = unique_name
    bot = start_bot(config(name, web_pipeline(deployers=[DEV, DEV2])))

    for command, text in (("/deploy", f"{name} 1"), ("/rollback", f"{name} 1")):
        reply = answer(bot.slack.command(command, text, user_id=OUTSIDER))
        assert f"You are not a deployer of `{name}`" in reply
        for helper in (DEV, DEV2, ADMIN):
            assert f"<@{helper}>" in reply, reply

    assert rollouts(bot, name) == []
    refusals = [(e.actor, e.action, e.outcome, e.detail, e.command) for e in audit(bot, name)]
    assert refusals == [
        (OUTSIDER, "deploy", "refused", "not_a_deployer", f"/deploy {name} 1"),
        (OUTSIDER, "rollback", "refused", "not_a_deployer", f"/rollback {name} 1"),
    ]


def test_admins_may_do_everything(start_bot: StartBot, web_pipeline: Any, unique_name: str) -> None:
    name = unique_name
    bot = start_bot(config(name, web_pipeline(deployers=[DEV])))

    deploy_and_finish(bot, f"{name} 1", ADMIN)
    deploy_and_finish(bot, f"{name} 2 --force urgent fix", ADMIN)
    forced = rollouts(bot, name)[0]
    assert forced.forced and forced.reason == "urgent fix"
    reply = answer(bot.slack.command("/rollback", f"{name} 1", user_id=ADMIN))
    assert wait_finished(bot, rollout_id_in(reply)).status is RolloutStatus.good
    assert [e.actor for e in audit(bot, name) if e.outcome == "accepted"] == [ADMIN] * 3


def test_force_is_for_admins_only(start_bot: StartBot, web_pipeline: Any, unique_name: str) -> None:
    name = unique_name
    bot = start_bot(config(name, web_pipeline(deployers=[DEV])))

    reply = answer(bot.slack.command("/deploy", f"{name} 1 --force I know", user_id=DEV))
    assert "Only admins may `--force`" in reply and f"<@{ADMIN}>" in reply
    assert rollouts(bot, name) == []
    [entry] = audit(bot, name)
    assert (entry.actor, entry.outcome, entry.detail) == (DEV, "refused", "force_not_admin")
    assert entry.command == f"/deploy {name} 1 --force I know"


def test_without_a_deployers_list_anyone_may_deploy(
    start_bot: StartBot, web_pipeline: Any, unique_name: str
) -> None:
    name = unique_name
    bot = start_bot(config(name, web_pipeline()))
    deploy_and_finish(bot, f"{name} 1", OUTSIDER)


def test_nobody_listed_says_whom_to_ask(
    start_bot: StartBot, web_pipeline: Any, unique_name: str
) -> None:
    name = unique_name
    bot = start_bot(config(name, web_pipeline(deployers=[]), admins=[]))
    reply = answer(bot.slack.command("/deploy", f"{name} 1", user_id=DEV))
    assert f"You are not a deployer of `{name}`" in reply
    assert "operators" in reply and "`deployers`" in reply


def test_anyone_may_read_pipeline_from_anywhere(
    start_bot: StartBot, web_pipeline: Any, unique_name: str
) -> None:
    name = unique_name
    bot = start_bot(config(name, web_pipeline(deployers=[DEV])))
    deploy_and_finish(bot, f"{name} 1", DEV)

    status = answer(
        bot.slack.command("/pipeline", name, user_id=OUTSIDER, channel_id=OTHER_CHANNEL)
    )
    assert f"*{name}*" in status and "live: `1`" in status
    overview = answer(bot.slack.command("/pipeline", "", user_id=OUTSIDER, channel_id="D0DIRECT"))
    assert f"*{name}*" in overview
    history = answer(
        bot.slack.command(
            "/pipeline", f"history {name}", user_id=OUTSIDER, channel_id=OTHER_CHANNEL
        )
    )
    assert f"History of {name}" in history and f"/deploy {name} 1" in history
    exported = answer(
        bot.slack.command("/pipeline", f"audit {name}", user_id=OUTSIDER, channel_id=OTHER_CHANNEL)
    )
    assert f"# Audit trail of {name}" in exported
    assert not [e for e in audit(bot, name) if e.outcome == "refused"]


def test_commands_from_other_channels_are_refused(
    start_bot: StartBot, web_pipeline: Any, unique_name: str
) -> None:
    name = unique_name
    bot = start_bot(config(name, web_pipeline(deployers=[DEV])))

    for user in (DEV, ADMIN):
        reply = answer(
            bot.slack.command("/deploy", f"{name} 1", user_id=user, channel_id=OTHER_CHANNEL)
        )
        assert f"Commands for `{name}` are taken in <#{CHANNEL}> only" in reply
        assert f"Run `/deploy {name} 1` there" in reply
    reply = answer(bot.slack.command("/rollback", name, user_id=DEV, channel_id=OTHER_CHANNEL))
    assert f"<#{CHANNEL}> only" in reply

    assert rollouts(bot, name) == []
    assert [(e.actor, e.action, e.detail) for e in audit(bot, name)] == [
        (DEV, "deploy", "wrong_channel"),
        (ADMIN, "deploy", "wrong_channel"),
        (DEV, "rollback", "wrong_channel"),
    ]


@pytest.mark.parametrize("allowed", [[OTHER_CHANNEL], ["*"]], ids=["listed", "anywhere"])
def test_command_channels_allow_other_channels(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, allowed: list[str]
) -> None:
    name = unique_name
    bot = start_bot(config(name, web_pipeline(deployers=[DEV], command_channels=allowed)))

    reply = answer(bot.slack.command("/deploy", f"{name} 1", user_id=DEV, channel_id=OTHER_CHANNEL))
    assert reply.startswith("Deploying"), reply
    # Progress still goes to the pipeline's own channel.
    assert f"progress in <#{CHANNEL}>" in reply
    assert wait_finished(bot, rollout_id_in(reply)).status is RolloutStatus.good

    elsewhere = answer(bot.slack.command("/deploy", f"{name} 2", user_id=DEV, channel_id="C0THIRD"))
    if allowed == ["*"]:
        assert elsewhere.startswith("Deploying"), elsewhere
        assert wait_finished(bot, rollout_id_in(elsewhere)).status is RolloutStatus.good
    else:
        assert f"Commands for `{name}` are taken in <#{OTHER_CHANNEL}> only" in elsewhere


# When: deploy windows ----------------------------------------------------------------------

OFFICE_HOURS = [{"days": "mon-thu", "hours": "09:00-17:00"}]


def test_deploys_outside_a_window_are_refused_with_the_next_opening(
    start_bot: StartBot, web_pipeline: Any, unique_name: str, emulator: Any
) -> None:
    name = unique_name
    clock = FrozenClock(london(2025, 6, 2, 10, 0))  # Monday 10:00 BST
    bot = start_bot(config(name, web_pipeline(deployers=[DEV], windows=OFFICE_HOURS)), clock=clock)
    deploy_and_finish(bot, f"{name} 1", DEV)
    deploy_and_finish(bot, f"{name} 2", DEV)

    clock.set(london(2025, 6, 6, 18, 0))  # Friday evening
    for user in (DEV, ADMIN):  # admins too, unless they force it
        reply = answer(bot.slack.command("/deploy", f"{name} 1", user_id=user))
        assert (
            f"`{name}` is outside its deploy windows (mon-thu 09:00-17:00 Europe/London)" in reply
        )
        monday = int(london(2025, 6, 9, 9, 0))
        assert f"The next window opens <!date^{monday}^" in reply
        assert "`--force <reason>`" in reply and f"<@{ADMIN}>" in reply
    refused = [(e.actor, e.detail) for e in audit(bot, name) if e.outcome == "refused"]
    assert refused == [(DEV, "outside_window"), (ADMIN, "outside_window")]

    # Rollbacks are never blocked by windows.
    reply = answer(bot.slack.command("/rollback", f"{name} 1", user_id=DEV))
    assert reply.startswith(f"Rolling `{name}` back to `1`"), reply
    assert wait_finished(bot, rollout_id_in(reply)).status is RolloutStatus.good

    # An admin may deploy outside with a reason, which is shown and audited.
    reply = answer(
        bot.slack.command("/deploy", f"{name} 2 --force fix for ticket 42", user_id=ADMIN)
    )
    assert reply.startswith("Deploying"), reply
    rollout = wait_finished(bot, rollout_id_in(reply))
    assert rollout.status is RolloutStatus.good and rollout.forced
    [shown] = [m for m in emulator.messages(CHANNEL) if m["ts"] == rollout.message_ts]
    assert "forced outside the deploy window: fix for ticket 42" in str(shown["blocks"])
    [forced] = [e for e in audit(bot, name) if e.outcome == "accepted" and e.actor == ADMIN]
    assert "forced: fix for ticket 42" in forced.detail
    assert forced.command == f"/deploy {name} 2 --force fix for ticket 42"

    clock.set(london(2025, 6, 9, 9, 0))  # Monday 09:00: open again
    reply = answer(bot.slack.command("/deploy", f"{name} 1", user_id=DEV))
    assert reply.startswith("Deploying"), reply
    assert wait_finished(bot, rollout_id_in(reply)).status is RolloutStatus.good


def test_a_window_on_the_day_the_clocks_go_forward_opens_at_local_time(
    start_bot: StartBot, web_pipeline: Any, unique_name: str
) -> None:
    name = unique_name
    clock = FrozenClock(london(2025, 3, 29, 12, 0))  # Saturday, GMT
    sunday = [{"days": "sun", "hours": "09:00-17:00"}]
    bot = start_bot(config(name, web_pipeline(windows=sunday)), clock=clock)

    reply = answer(bot.slack.command("/deploy", f"{name} 1", user_id=DEV))
    opens = int(datetime(2025, 3, 30, 8, 0, tzinfo=UTC).timestamp())  # 09:00 BST
    assert f"The next window opens <!date^{opens}^" in reply, reply
    clock.set(opens - 1)
    assert "outside" in answer(bot.slack.command("/deploy", f"{name} 1", user_id=DEV))
    clock.set(opens)
    reply = answer(bot.slack.command("/deploy", f"{name} 1", user_id=DEV))
    assert reply.startswith("Deploying"), reply
    assert wait_finished(bot, rollout_id_in(reply)).status is RolloutStatus.good
