"""Slack being slow or rate limited never holds up a rollout; the message catches up."""

from __future__ import annotations

from typing import Any

import pytest

from bot.domain.models import RolloutStatus
from tests.scenarios.test_deploy_loop import deploy, finished, serving_version
from tests.support.bot_harness import CHANNEL, wait_until

pytestmark = pytest.mark.docker


@pytest.mark.parametrize("method", ["chat.postMessage", "chat.update"])
def test_a_rate_limited_message_does_not_hold_up_the_rollout(
    start_bot: Any, web_pipeline: Any, emulator: Any, method: str
) -> None:
    web = web_pipeline()
    bot = start_bot({"pipelines": {"web": web}})
    emulator.rate_limit_next(method, retry_after=6, times=1)
    deploy(bot, "web 1")
    rollout = finished(bot, "web", "1", timeout=5)
    assert rollout.status is RolloutStatus.good
    assert serving_version(web) == "1"
    # The rollout ended while Slack's back-off still held its message back …
    assert [c.status for c in emulator.calls(method)][:1] == [429]
    shown = [m for m in emulator.messages(CHANNEL) if "live and good" in m["text"]]
    assert shown == [], "the final state waits for the back-off"
    # … and once it is over, the message shows the final state, in one message.
    wait_until(
        lambda: [m for m in emulator.messages(CHANNEL) if "live and good" in m["text"]],
        15,
        what="the message to catch up",
    )
    assert len(emulator.messages(CHANNEL)) == 1
    assert bot.ctx.store.rollout(rollout.id).message_ts == emulator.messages(CHANNEL)[0]["ts"]


def test_a_slow_slack_is_not_in_the_swap(start_bot: Any, web_pipeline: Any, emulator: Any) -> None:
    web = web_pipeline()
    bot = start_bot({"pipelines": {"web": web}})
    deploy(bot, "web 1")
    assert finished(bot, "web", "1").status is RolloutStatus.good
    emulator.set_latency("chat.update", 2.0)
    deploy(bot, "web 2")
    rollout = finished(bot, "web", "2", timeout=30)
    assert rollout.status is RolloutStatus.good
    assert rollout.swap_gap_seconds is not None
    # Each step's message update takes 2 s; none of them sits between stopping 1 and 2 serving.
    assert rollout.swap_gap_seconds < 2.0, rollout.steps
