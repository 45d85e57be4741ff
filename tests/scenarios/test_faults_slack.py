"""Slack fails: a revoked token, a 5xx, no answer in time, or a channel the bot cannot post in.

Rollouts and rollbacks go on without Slack (every message waits in the bot's outbox), the
reason is logged once, `/healthz` names Slack's state with since when, and the messages
arrive in order once Slack works again, or are given up after SLACK_GIVE_UP_SECONDS with a
log line. A channel Slack refuses is logged once, with what to do, and not retried.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import requests

from bot.domain.models import RolloutKind, RolloutStatus
from bot.services.incidents import load_incident
from tests.scenarios.test_deploy_loop import deploy, finished, serving_version
from tests.scenarios.test_watch import watched_rollout_ended
from tests.scenarios.test_watch import watched_web as watched_web  # a fixture
from tests.support.bot_harness import CHANNEL, wait_until
from tests.support.slack_emulator import SlackEmulator

pytestmark = pytest.mark.docker

TIMEOUT_SECONDS = 2  # the bot's SLACK_TIMEOUT_SECONDS here; a held call outlasts it
HOLD_SECONDS = 6
FAST = {"slack_timeout_seconds": TIMEOUT_SECONDS, "slack_retry_seconds": 0.5}


def break_slack(emulator: SlackEmulator, fault: str) -> None:
    if fault == "5xx":
        emulator.fail_with_status(503)
    elif fault == "timeout":
        emulator.hold_calls(HOLD_SECONDS)
    else:
        emulator.fail_calls(fault)


EXPECTED = {
    "invalid_auth": ("auth_failed", "Slack auth failed: invalid_auth;"),
    "account_inactive": ("auth_failed", "Slack auth failed: account_inactive;"),
    "5xx": ("unreachable", "Slack unreachable: Slack answered HTTP 503;"),
    "timeout": ("unreachable", f"Slack unreachable: no answer within {TIMEOUT_SECONDS}s;"),
}


def slack_health(bot: Any) -> dict[str, Any]:
    body = requests.get(bot.url + "/healthz", timeout=5).json()
    slack: dict[str, Any] = body["slack"]
    return slack


def link_lines(caplog: pytest.LogCaptureFixture, level: int = logging.ERROR) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "bot.slack.link" and r.levelno >= level
    ]


@pytest.mark.prometheus
@pytest.mark.parametrize("fault", ["invalid_auth", "5xx", "timeout"])
def test_a_deploy_and_its_rollback_finish_while_every_slack_call_fails(
    start_bot: Any,
    watched_web: Any,
    prometheus_server: Any,
    emulator: SlackEmulator,
    caplog: pytest.LogCaptureFixture,
    fault: str,
) -> None:
    caplog.set_level(logging.INFO)
    web = watched_web(duration="8s")
    bot = start_bot({"pipelines": {"web": web}}, prometheus_url=prometheus_server.url, **FAST)
    deploy(bot, "web 1")
    assert watched_rollout_ended(bot, "1").status is RolloutStatus.good
    wait_until(lambda: slack_health(bot)["queued"] == 0, 10, what="the first messages")
    before = len(emulator.messages(CHANNEL))
    assert slack_health(bot)["state"] == "ok"

    break_slack(emulator, fault)
    broken_at = time.time()
    emulator.clear()
    deploy(bot, "web 3")  # 50% of its requests fail: a breach, then the automatic rollback
    bad = finished(bot, "web", "3")
    assert bad.status is RolloutStatus.live
    breached = watched_rollout_ended(bot, "3", timeout=40)
    assert breached.status is RolloutStatus.rolled_back and breached.incident_id
    restore = wait_until(
        lambda: next(
            (
                r
                for r in bot.ctx.store.recent_rollouts("web", 3)
                if r.kind is RolloutKind.auto_rollback and not r.status.in_flight_states
            ),
            None,
        ),
        20,
        what="the automatic rollback to end",
    )
    assert restore.status is RolloutStatus.good and serving_version(web) == "1"
    # Neither waited for Slack: the deploy's swap and the rollback's took engine time only.
    deploy_took = (bad.live_at or 0) - bad.created_at
    rollback_took = (restore.live_at or 0) - restore.created_at
    print(f"\n{fault}: deploy {deploy_took:.2f}s, rollback {rollback_took:.2f}s with Slack down")
    assert deploy_took < 5 and rollback_took < 5, (deploy_took, rollback_took)

    # Slack took nothing meanwhile, and /healthz says why, since when.
    assert all(not call.ok for call in emulator.calls()), [c.summary() for c in emulator.calls()]
    assert len(emulator.messages(CHANNEL)) == before
    state, line = EXPECTED[fault]
    health = slack_health(bot)
    assert health["ok"] is False and health["state"] == state, health
    assert health["since"] >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(broken_at - 1))
    assert health["queued"] >= 2, health  # the rollouts' messages, the alert
    # One line for the reason, however many messages and tries met it (a held call is
    # recorded when its hold ends).
    wait_until(lambda: len(emulator.calls()) >= 3, HOLD_SECONDS + 5, what="three tries")
    assert all(not call.ok for call in emulator.calls()), [c.summary() for c in emulator.calls()]
    lines = link_lines(caplog)
    assert [text for text in lines if text.startswith("Slack ")] == [
        next(text for text in lines if line in text)
    ], lines
    assert not [r for r in caplog.records if "could not" in r.getMessage() and "Slack" in r.name]

    emulator.heal()
    wait_until(
        lambda: slack_health(bot)["queued"] == 0 and slack_health(bot)["ok"],
        HOLD_SECONDS + 20,
        what="the outbox to catch up",
    )
    # The messages arrive, in the order things happened, each showing its latest state.
    posted = emulator.messages(CHANNEL)[before:]
    top = [m for m in posted if not m.get("thread_ts") or m.get("thread_ts") == m["ts"]]
    bad_message = bot.ctx.store.rollout(bad.id).message_ts
    restore_message = bot.ctx.store.rollout(restore.id).message_ts
    incident = load_incident(bot.ctx.store, breached.incident_id)
    assert bad_message and restore_message and incident.alert_ts, "each ts was recorded"
    # The deploy's message waited first, so it comes first; the rollback's and the alert were
    # queued by two threads at about the same moment, in either order.
    order = [m["ts"] for m in top]
    assert order[0] == bad_message and set(order) == {
        bad_message,
        restore_message,
        incident.alert_ts,
    }, top
    shown = {m["ts"]: m["text"] for m in top}
    assert "rolled back" in shown[bad_message], shown[bad_message]
    assert "live and good" in shown[restore_message], shown[restore_message]
    thread = emulator.replies(CHANNEL, incident.alert_ts)
    assert any("Why 1" in m["text"] for m in thread), thread
    assert bot.ctx.store.incident_for_thread(CHANNEL, incident.alert_ts) == incident.id
    assert "Slack works again" in " ".join(link_lines(caplog, logging.WARNING))


def test_messages_waiting_longer_than_the_bound_are_given_up_with_a_log_line(
    start_bot: Any,
    web_pipeline: Any,
    emulator: SlackEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    web = web_pipeline()
    bot = start_bot({"pipelines": {"web": web}}, slack_give_up_seconds=3, **FAST)
    emulator.fail_calls("account_inactive")
    deploy(bot, "web 1")
    first = finished(bot, "web", "1")
    assert first.status is RolloutStatus.good and serving_version(web) == "1"
    assert slack_health(bot)["state"] == "auth_failed"

    given_up = wait_until(
        lambda: [text for text in link_lines(caplog) if text.startswith("gave up on")],
        10,
        what="the give-up line",
    )
    assert len(given_up) == 1 and f"the rollout message of {first.id}" in given_up[0], given_up
    assert "waited more than 3s" in given_up[0]
    health = slack_health(bot)
    assert health["queued"] == 0 and health["given_up"] >= 1, health

    emulator.heal()
    time.sleep(1.5)  # three retry intervals: a given-up message never comes
    assert emulator.messages(CHANNEL) == []
    assert bot.ctx.store.rollout(first.id).message_ts is None
    deploy(bot, "web 2")  # what happens next is told again
    second = finished(bot, "web", "2")
    shown = wait_until(
        lambda: bot.ctx.store.rollout(second.id).message_ts, 10, what="web 2's message"
    )
    assert shown in [m["ts"] for m in emulator.messages(CHANNEL)]
    assert slack_health(bot)["state"] == "ok"


@pytest.mark.parametrize("error", ["not_in_channel", "channel_not_found", "is_archived"])
def test_a_channel_slack_refuses_is_logged_once_with_what_to_do_and_not_retried(
    start_bot: Any,
    web_pipeline: Any,
    emulator: SlackEmulator,
    caplog: pytest.LogCaptureFixture,
    error: str,
) -> None:
    caplog.set_level(logging.INFO)
    web = web_pipeline()
    bot = start_bot({"pipelines": {"web": web}}, **FAST)
    emulator.fail_calls(error, methods=["chat.postMessage", "chat.update"])
    for version in ("1", "2"):
        deploy(bot, f"web {version}")
        assert finished(bot, "web", version).status is RolloutStatus.good
        assert serving_version(web) == version
    wait_until(lambda: slack_health(bot)["queued"] == 0, 10, what="the outbox to empty")
    tried = len(emulator.calls("chat.postMessage"))
    time.sleep(2)  # 4 retry intervals: nothing is tried again
    assert len(emulator.calls("chat.postMessage")) == tried >= 2
    lines = [text for text in link_lines(caplog) if "refuses messages to channel" in text]
    assert len(lines) == 1, lines
    assert CHANNEL in lines[0] and error in lines[0]
    advice = {
        "not_in_channel": "invite the bot to",
        "channel_not_found": "check `channel:` in pipelines.yml",
        "is_archived": "unarchive",
    }
    assert advice[error] in lines[0], lines[0]
    # A channel's refusal is not Slack failing: the state stays ok.
    health = slack_health(bot)
    assert health["ok"] is True and health["state"] == "ok", health

    # Once the bot is invited (here: the refusals end), the next message goes through.
    emulator.heal()
    deploy(bot, "web 1")
    again = finished(bot, "web", "1")
    wait_until(lambda: bot.ctx.store.rollout(again.id).message_ts, 10, what="the message")
