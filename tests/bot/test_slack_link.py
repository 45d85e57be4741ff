"""The Slack outbox against the emulator: order, merging, bounds, refusals and the caller's wait."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest
from slack_sdk import WebClient

from bot.slack.link import MessageRefused, SlackLink, SlackState
from tests.support.bot_harness import wait_until
from tests.support.slack_emulator import SlackEmulator

CHANNEL = "C0DEPLOY"


@pytest.fixture
def emulator() -> Iterator[SlackEmulator]:
    with SlackEmulator() as slack:
        yield slack


@pytest.fixture
def client(emulator: SlackEmulator) -> WebClient:
    return emulator.web_client(timeout=1)


def make_link(**overrides: float) -> SlackLink:
    settings = {"timeout_seconds": 1.0, "retry_seconds": 0.1, "give_up_seconds": 60.0}
    settings.update(overrides)
    return SlackLink(**settings)


def post(client: WebClient, text: str, channel: str = CHANNEL) -> str:
    return str(client.chat_postMessage(channel=channel, text=text)["ts"])


def test_messages_wait_in_order_while_slack_fails_and_follow_when_it_works(
    emulator: SlackEmulator, client: WebClient, caplog: pytest.LogCaptureFixture
) -> None:
    link = make_link()
    late: list[str] = []
    assert link.send("m0", lambda: post(client, "m0"), channel=CHANNEL)
    emulator.fail_calls("token_revoked")
    started = time.monotonic()
    for n in range(1, 6):
        text = f"m{n}"
        sent = link.send(
            text, lambda text=text: post(client, text), channel=CHANNEL, on_late=late.append
        )
        assert sent is None
    assert time.monotonic() - started < 0.5, "a caller does not wait once the auth fails"
    wait_until(lambda: link.state is SlackState.auth_failed, 5, what="auth_failed")
    health = link.health()
    assert health["ok"] is False and health["reason"] == "token_revoked"
    assert health["queued"] == 5
    time.sleep(0.5)  # several retries of the first: one log line all the same
    assert [r.getMessage()[:34] for r in caplog.records if r.name == "bot.slack.link"] == [
        "Slack auth failed: token_revoked; "
    ]

    emulator.heal()
    wait_until(lambda: link.health()["queued"] == 0, 5, what="the catch-up")
    assert [m["text"] for m in emulator.messages(CHANNEL)] == [f"m{n}" for n in range(6)]
    assert late == [m["ts"] for m in emulator.messages(CHANNEL)[1:]], "each ts comes back"
    assert link.health()["state"] == "ok"
    link.stop()


def test_changes_of_one_message_queued_meanwhile_become_its_latest_state(
    emulator: SlackEmulator, client: WebClient
) -> None:
    link = make_link()
    emulator.fail_with_status(502)
    for step in ("queued", "in flight", "live"):
        link.send(f"rollout r-1 ({step})", lambda step=step: post(client, step), key="r-1")
    link.send("another", lambda: post(client, "another"))
    wait_until(lambda: link.state is SlackState.unreachable, 5, what="unreachable")
    assert link.health()["queued"] == 2
    emulator.heal()
    wait_until(lambda: link.health()["queued"] == 0, 5, what="the catch-up")
    assert [m["text"] for m in emulator.messages(CHANNEL)] == ["live", "another"]
    link.stop()


def test_a_caller_waits_at_most_the_wait_even_for_a_call_that_hangs(
    emulator: SlackEmulator, client: WebClient
) -> None:
    link = make_link(wait_seconds=0.3)
    emulator.hold_calls(3)
    late: list[str] = []
    started = time.monotonic()
    assert link.send("slow", lambda: post(client, "slow"), on_late=late.append) is None
    assert time.monotonic() - started < 0.6
    wait_until(lambda: link.state is SlackState.unreachable, 5, what="the timeout")
    assert link.health()["reason"] == "no answer within 1s"
    emulator.heal()
    wait_until(lambda: late, 10, what="the late ts")
    assert late == [emulator.messages(CHANNEL)[0]["ts"]]
    link.stop()


def test_messages_past_the_bound_are_given_up_with_one_log_line(
    emulator: SlackEmulator, client: WebClient, caplog: pytest.LogCaptureFixture
) -> None:
    link = make_link(give_up_seconds=0.4)
    emulator.fail_calls("invalid_auth")
    link.send("the first", lambda: post(client, "first"))
    link.send("the second", lambda: post(client, "second"))
    wait_until(lambda: link.health()["given_up"] == 2, 5, what="the give-up")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("gave up on")]
    assert lines == [
        "gave up on 2 Slack message(s) that waited more than 0.4s (SLACK_GIVE_UP_SECONDS; "
        "Slack auth_failed: invalid_auth): the first, the second"
    ]
    emulator.heal()
    time.sleep(0.3)
    assert emulator.messages(CHANNEL) == []
    link.stop()


def test_a_refused_channel_is_logged_once_not_retried_and_raised_when_asked(
    emulator: SlackEmulator, client: WebClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    link = make_link()
    emulator.add_channel("C0OUT", "outside", is_member=False)
    assert link.send("one", lambda: post(client, "one", "C0OUT"), channel="C0OUT") is None
    with pytest.raises(MessageRefused) as refused:
        link.send("two", lambda: post(client, "two", "C0OUT"), channel="C0OUT", raise_refused=True)
    assert refused.value.error == "not_in_channel"
    time.sleep(0.3)
    assert len(emulator.calls("chat.postMessage")) == 2, "each tried once"
    lines = [r.getMessage() for r in caplog.records if "refuses messages" in r.getMessage()]
    assert lines == [
        "Slack refuses messages to channel C0OUT (not_in_channel): invite the bot to channel "
        "C0OUT (type /invite @immune in it); its messages are dropped, not retried"
    ]
    assert link.state is SlackState.ok, "a channel's refusal is not Slack failing"
    link.stop()


def test_a_stop_that_waits_returns_after_the_call_in_flight_and_tries_nothing_more() -> None:
    """A bot stopped between two tests (or at shutdown) leaves no outbox thread behind to
    meet a Slack that has gone meanwhile and log about it later."""
    link = make_link(wait_seconds=0.05)
    started, release = threading.Event(), threading.Event()
    tried: list[str] = []

    def slow() -> str:
        tried.append("slow")
        started.set()
        release.wait(5)
        return "ts-slow"

    assert link.send("slow", slow) is None  # its caller stopped waiting
    link.send("next", lambda: tried.append("next") or "ts-next")
    assert started.wait(5)
    stopped = threading.Event()
    stopper = threading.Thread(target=lambda: (link.stop(wait=True), stopped.set()))
    stopper.start()
    assert not stopped.wait(0.3), "the stop waits for the call in flight"
    release.set()
    assert stopped.wait(5), "and returns once it ended"
    stopper.join(5)
    assert not link._worker.is_alive()
    assert tried == ["slow"], "nothing is tried after the stop"


def test_a_stop_that_does_not_wait_returns_at_once() -> None:
    link = make_link(wait_seconds=0.05)
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(5)
        return "ts"

    link.send("slow", slow)
    assert started.wait(5)
    began = time.monotonic()
    link.stop()
    assert time.monotonic() - began < 0.1
    release.set()
