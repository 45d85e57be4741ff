"""The slash-command listener through bolt: each command reaches its use case with the bot's
Context, its answer is the ephemeral ack, and an unknown command is left unhandled."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from urllib.parse import urlencode

import pytest
import redis
from prometheus_client import REGISTRY
from slack_bolt import App, BoltRequest
from slack_sdk import WebClient
from slack_sdk.signature import SignatureVerifier

from bot.app import build_bolt_app
from bot.domain.errors import NotAllowed, RolloutInFlight
from bot.domain.text import as_text
from bot.services.context import Context
from bot.services.requests import CommandRequest, Reply
from bot.settings import Settings
from bot.slack.forms import queue_button, queue_offer
from handlers import commands
from tests.support.bot_harness import BOT_TOKEN
from tests.support.domain import CHANNEL, domain_context, web_config
from tests.support.slack_emulator import SlackEmulator

SECRET = "test-signing-secret"


@pytest.fixture
def ctx(redis_client: redis.Redis) -> Iterator[Context]:
    with domain_context(redis_client, web_config()) as made:
        yield made


@pytest.fixture
def bolt(ctx: Context, caplog: pytest.LogCaptureFixture) -> Iterator[App]:
    # Bolt gives each listener a logger with the root logger's level at the time the app is
    # built: INFO, as `python -m bot` sets it by default.
    caplog.set_level(logging.INFO)
    with SlackEmulator() as slack:  # bolt asks it auth.test once
        settings = Settings(
            redis_url="redis://127.0.0.1:9",  # unused: the Context is the test's
            pipelines_file="unused.yml",
            slack_api_url=slack.base_url,
            slack_bot_token=BOT_TOKEN,
            slack_signing_secret=SECRET,
            slack_token_verification=False,
        )
        yield build_bolt_app(settings, ctx, WebClient(token=BOT_TOKEN, base_url=slack.base_url))


def signed(command: str, text: str) -> BoltRequest:
    body = urlencode(
        {
            "command": command,
            "text": text,
            "user_id": "U0DEV1",
            "channel_id": CHANNEL,
            "team_id": "T0TEAM",
            "trigger_id": f"trigger-{time.monotonic_ns()}",
            "response_url": "http://127.0.0.1:9/response",
        }
    )
    timestamp = str(int(time.time()))
    signature = SignatureVerifier(SECRET).generate_signature(timestamp=timestamp, body=body)
    assert signature is not None
    headers: dict[str, str | Sequence[str]] = {
        "content-type": "application/x-www-form-urlencoded",
        "x-slack-request-timestamp": timestamp,
        "x-slack-signature": signature,
    }
    return BoltRequest(body=body, headers=headers)


@pytest.mark.parametrize("name", sorted(commands.OPERATIONS))
def test_each_command_reaches_its_use_case_with_the_bots_context(
    name: str, bolt: App, ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[Context, CommandRequest]] = []

    def operation(given: Context, request: CommandRequest) -> Reply:
        seen.append((given, request))
        return Reply(as_text(f"answered {request.command}"))

    monkeypatch.setitem(commands.OPERATIONS, name, operation)
    response = bolt.dispatch(signed(name, "web 1"))
    assert response.status == 200
    assert json.loads(response.body) == {
        "text": f"answered {name}",
        "response_type": "ephemeral",
    }
    [(given, request)] = seen
    assert given is ctx and request.command == name and request.text == "web 1"


def test_an_unknown_command_is_not_handled(bolt: App) -> None:
    assert bolt.dispatch(signed("/nope", "web 1")).status == 404


def test_a_refusal_is_the_listeners_ephemeral_answer_logged_once_and_counted(
    bolt: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.clear()

    def refuse(given: Context, request: CommandRequest) -> Reply:
        raise NotAllowed("You are not a deployer of `web`.", hint="Ask an admin.")

    monkeypatch.setitem(commands.OPERATIONS, "/deploy", refuse)
    labels = {"command": "/deploy", "outcome": "not_allowed"}
    before = REGISTRY.get_sample_value("immune_commands_total", labels) or 0.0
    response = bolt.dispatch(signed("/deploy", "web 1"))
    assert response.status == 200
    assert json.loads(response.body) == {
        "text": "You are not a deployer of `web`.\nAsk an admin.",
        "response_type": "ephemeral",
    }
    assert REGISTRY.get_sample_value("immune_commands_total", labels) == before + 1
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
    assert refusals == [
        "refused (not_allowed) U0DEV1 /deploy web 1: You are not a deployer of `web`."
    ]


def test_a_busy_pipelines_refusal_offers_the_queue_button_as_slack_sdk_builds_it(
    bolt: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The button is validated by slack_sdk once per pipeline and version, then copied: each
    answer carries exactly what slack_sdk builds, and no answer can change the next one's."""

    def busy(given: Context, request: CommandRequest) -> Reply:
        refusal = RolloutInFlight(as_text("A rollout of `web` is in flight."))
        refusal.queue_offer = ("web", "2")
        raise refusal

    monkeypatch.setitem(commands.OPERATIONS, "/deploy", busy)
    answers = [json.loads(bolt.dispatch(signed("/deploy", "web 2")).body) for _ in range(2)]
    section, button = answers[0]["blocks"]
    assert section == {
        "type": "section",
        "text": {"type": "mrkdwn", "text": "A rollout of `web` is in flight."},
    }
    assert button == queue_button("web", "2").to_dict()
    assert answers[1]["blocks"] == answers[0]["blocks"]
    offered = queue_offer("web", "2")
    offered["elements"][0]["value"] = "changed"
    assert queue_offer("web", "2") == button
