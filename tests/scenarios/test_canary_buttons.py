"""A held canary step's buttons, pressed through the signed endpoint (real HAProxy).

A canary step whose compare KPI cannot get enough samples holds and asks the channel
(`canary_promote` / `canary_abort`, policy `hold`: nobody answering decides nothing). Only a
deployer's press counts, once per step: promote moves the split on at HAProxy, abort rolls
back to the baseline.
"""

from __future__ import annotations

from typing import Any

import pytest

from bot.domain.models import RolloutKind, RolloutStatus
from bot.slack.ids import ActionId
from tests.scenarios.test_deploy_loop import deploy
from tests.scenarios.test_traffic import first_good, listen_port, rollout_of, start_served_bot
from tests.support.bot_harness import CHANNEL, wait_until
from tests.support.load import steady_load
from tests.support.policy import DEV, DEV2, OUTSIDER, audit, button_answer, message_text, press

pytestmark = [pytest.mark.docker, pytest.mark.prometheus, pytest.mark.haproxy, pytest.mark.slow]

RATE = 50.0  # requests a second through HAProxy: the compare KPI has values, too few of them
PROMOTE, ABORT = ActionId.canary_promote.value, ActionId.canary_abort.value


def held_web(served_web: Any) -> dict[str, Any]:
    web: dict[str, Any] = served_web(
        strategy="canary",
        steps=[20, 100],
        step_duration="2s",
        inconclusive="hold",
        inconclusive_after="5m",  # no one answering decides nothing within the test
    )
    web["deployers"] = [DEV, DEV2]
    # The canary's step never gets the 1000 samples its compare KPI needs, so it holds and
    # asks; the watch outlasts the question (the first deploy, with no baseline, sits it out).
    web["watch"] = {"interval": "1s", "duration": "20s", "warmup": 0}
    web["kpis"] = [
        {
            "name": "errors",
            "builtin": "error_rate",
            "judge": "compare",
            "tolerance": "+50%",
            "min_samples": 1000,
            "max": 0.5,
            "no_data": "ignore",
        }
    ]
    return web


def held_prompt(bot: Any) -> tuple[Any, dict[str, Any]]:
    held = rollout_of(
        bot,
        "2",
        lambda r: (
            r.traffic is not None and r.traffic.held_since is not None and bool(r.canary_prompt_ts)
        ),
        timeout=45,
    )
    prompt = wait_until(
        lambda: (m := bot.emulator.message(CHANNEL, held.canary_prompt_ts)) and m,
        10,
        what="the held canary's prompt",
    )
    return held, prompt


def buttons(message: dict[str, Any]) -> list[str]:
    return [
        e["action_id"]
        for b in message.get("blocks", [])
        if b["type"] == "actions"
        for e in b["elements"]
    ]


def test_a_deployer_promotes_a_held_canary_once_and_an_outsider_cannot(
    start_bot: Any, served_web: Any, prometheus_server: Any
) -> None:
    web = held_web(served_web)
    bot = start_served_bot(start_bot, web, prometheus_server)
    with steady_load("127.0.0.1", listen_port(web), rate=RATE, max_seconds=90):
        first_good(bot)
        deploy(bot, "web 2")
        held, prompt = held_prompt(bot)
        promote_once(bot, held, prompt)


def promote_once(bot: Any, held: Any, prompt: dict[str, Any]) -> None:
    assert held.traffic is not None and held.traffic.percent == 20
    assert buttons(prompt) == [PROMOTE, ABORT]

    refused = button_answer(bot.emulator, press(bot, prompt, PROMOTE, OUTSIDER))
    assert "deploy" in refused.lower() and f"<@{DEV}>" in refused, refused
    still = bot.ctx.store.rollout(held.id)
    assert still.traffic.percent == 20 and still.traffic.held_since is not None

    told = button_answer(bot.emulator, press(bot, prompt, PROMOTE, DEV))
    assert told.startswith("Promoted:"), told
    again = button_answer(bot.emulator, press(bot, prompt, PROMOTE, DEV2))
    assert "no longer waiting" in again or "already answered" in again, again
    moved = rollout_of(bot, "2", lambda r: r.traffic is not None and r.traffic.percent == 100)
    assert moved.status in (RolloutStatus.live, RolloutStatus.good)
    promoted = [e for e in audit(bot, "web") if e.action == "canary.promote"]
    assert [(e.actor, e.rollout) for e in promoted] == [(DEV, held.id)]


def test_a_deployer_aborts_a_held_canary_and_the_baseline_takes_all_traffic_back(
    start_bot: Any, served_web: Any, prometheus_server: Any
) -> None:
    web = held_web(served_web)
    bot = start_served_bot(start_bot, web, prometheus_server)
    with steady_load("127.0.0.1", listen_port(web), rate=RATE, max_seconds=90):
        first_good(bot)
        deploy(bot, "web 2")
        held, prompt = held_prompt(bot)
        abort(bot, held, prompt)


def abort(bot: Any, held: Any, prompt: dict[str, Any]) -> None:
    told = button_answer(bot.emulator, press(bot, prompt, ABORT, DEV))
    assert "1" in told, told
    back = rollout_of(
        bot, "1", lambda r: r.kind is RolloutKind.rollback and r.status.finished, timeout=40
    )
    assert back.status in (RolloutStatus.live, RolloutStatus.good), (back.status, back.error)
    ended = bot.ctx.store.rollout(held.id)
    assert ended is not None and ended.status is not RolloutStatus.live
    state = bot.ctx.store.pipeline("web")
    assert state.live_version == "1"
    shown = bot.emulator.message(CHANNEL, prompt["ts"])
    assert buttons(shown) == [], message_text(shown)
