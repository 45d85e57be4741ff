"""The Slack emulator and the signed client, checked against the real slack_sdk and bolt."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from slack_bolt import Ack, App, Respond
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.webhook import WebhookClient

from tests.support.slack_client import SignedSlackClient
from tests.support.slack_emulator import (
    ALL_METHODS,
    AUTH_ERRORS,
    CHANNEL_ERRORS,
    SlackEmulator,
)

SIGNING_SECRET = "test-signing-secret"
TS = re.compile(r"^\d{10}\.\d{6}$")
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) + b"\r\n--not-a-boundary\r\n" + b"\x00" * 64
BUTTONS: list[dict[str, Any]] = [
    {"type": "section", "text": {"type": "mrkdwn", "text": "Deploy *web* 1.4.2?"}},
    {
        "type": "actions",
        "block_id": "approval",
        "elements": [
            {
                "type": "button",
                "action_id": "deploy_approve",
                "text": {"type": "plain_text", "text": "Approve"},
                "style": "primary",
                "value": "rollout-1",
            },
            {
                "type": "button",
                "action_id": "deploy_reject",
                "text": {"type": "plain_text", "text": "Reject"},
                "value": "rollout-1",
            },
        ],
    },
]


@pytest.fixture
def emulator() -> Iterator[SlackEmulator]:
    with SlackEmulator() as slack:
        yield slack


@pytest.fixture
def client(emulator: SlackEmulator) -> WebClient:
    return WebClient(base_url=emulator.base_url, token="xoxb-test")


# ---------------------------------------------------------------------- Web API


def test_post_update_ephemeral_and_permalink(emulator: SlackEmulator, client: WebClient) -> None:
    posted = client.chat_postMessage(channel="C0DEPLOY", text="Deploying web", blocks=BUTTONS)

    assert posted["ok"] is True
    assert posted["channel"] == "C0DEPLOY"
    assert TS.match(posted["ts"])
    message = posted["message"]
    assert message["text"] == "Deploying web"
    assert message["user"] == emulator.bot_user_id
    assert message["bot_id"] == emulator.bot_id
    assert message["ts"] == posted["ts"]
    assert message["blocks"][1]["elements"][0]["action_id"] == "deploy_approve"
    assert message["blocks"][0]["block_id"], "Slack gives every block a block_id"

    updated = client.chat_update(channel="C0DEPLOY", ts=posted["ts"], text="Deployed web")
    assert updated["ts"] == posted["ts"]
    assert updated["text"] == "Deployed web"
    assert updated["message"]["blocks"] == message["blocks"], "blocks left out are kept"
    [stored] = emulator.messages("C0DEPLOY")
    assert stored["text"] == "Deployed web"
    assert "edited" in stored

    with pytest.raises(SlackApiError) as missing:
        client.chat_update(channel="C0DEPLOY", ts="1600000000.000001", text="x")
    assert missing.value.response["error"] == "message_not_found"

    ephemeral = client.chat_postEphemeral(channel="C0DEPLOY", user="U0DEV1", text="Only you")
    assert TS.match(ephemeral["message_ts"])
    assert emulator.ephemerals(user="U0DEV1")[0]["text"] == "Only you"

    link = client.chat_getPermalink(channel="C0DEPLOY", message_ts=posted["ts"])
    assert link["permalink"].endswith("/archives/C0DEPLOY/p" + posted["ts"].replace(".", ""))

    [call] = emulator.wait_for("chat.postMessage")
    assert call.headers["Authorization"] == "Bearer xoxb-test"
    assert call.body["blocks"] == BUTTONS
    assert call.response["ts"] == posted["ts"]


def test_threads_reactions_and_message_store(emulator: SlackEmulator, client: WebClient) -> None:
    parent = client.chat_postMessage(channel="C0DEPLOY", text="Breach on web")["ts"]
    reply = client.chat_postMessage(channel="C0DEPLOY", text="Why 1", thread_ts=parent)
    assert reply["message"]["thread_ts"] == parent
    person = emulator.add_message("C0DEPLOY", "why 1: bad config", user="U0DEV1", thread_ts=parent)
    client.reactions_add(channel="C0DEPLOY", timestamp=parent, name="rotating_light")

    with pytest.raises(SlackApiError) as again:
        client.reactions_add(channel="C0DEPLOY", timestamp=parent, name="rotating_light")
    assert again.value.response["error"] == "already_reacted"

    stored = emulator.messages("C0DEPLOY")
    assert [m["ts"] for m in stored] == [parent, reply["ts"], person]
    assert stored[0]["reply_count"] == 2
    assert stored[0]["reactions"] == [
        {"name": "rotating_light", "users": [emulator.bot_user_id], "count": 1}
    ]
    assert [m["text"] for m in emulator.replies("C0DEPLOY", parent)] == [
        "Why 1",
        "why 1: bad config",
    ]
    history = client.conversations_replies(channel="C0DEPLOY", ts=parent)
    assert len(history["messages"]) == 3

    with pytest.raises(SlackApiError) as not_mine:
        client.chat_update(channel="C0DEPLOY", ts=person, text="edited by the bot")
    assert not_mine.value.response["error"] == "cant_update_message"


def test_ts_are_unique_and_increasing_under_concurrency(
    emulator: SlackEmulator, client: WebClient
) -> None:
    seen: list[str] = []
    lock = threading.Lock()

    def post(n: int) -> None:
        ts = client.chat_postMessage(channel="C0DEPLOY", text=f"m{n}")["ts"]
        with lock:
            seen.append(ts)

    threads = [threading.Thread(target=post, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(set(seen)) == 20
    stored = [m["ts"] for m in emulator.messages("C0DEPLOY")]
    assert stored == sorted(stored) == sorted(seen)


def test_form_encoded_json_fields_are_decoded(emulator: SlackEmulator, client: WebClient) -> None:
    client.api_call(
        "chat.postMessage",
        data={"channel": "C0DEPLOY", "text": "form", "blocks": json.dumps(BUTTONS)},
    )

    [call] = emulator.calls("chat.postMessage")
    assert call.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert call.body["blocks"] == BUTTONS
    assert call.ok


def test_identity_users_and_channels(client: WebClient) -> None:
    auth = client.auth_test()
    assert isinstance(auth.data, dict)
    assert {"url", "team", "user", "team_id", "user_id", "bot_id"} <= auth.data.keys()

    user = client.users_info(user="U0DEV1")["user"]
    assert user["tz"] == "Europe/London"
    assert isinstance(user["tz_offset"], int)

    channel = client.conversations_info(channel="C0DEPLOY")["channel"]
    assert channel["id"] == "C0DEPLOY"
    assert channel["is_member"] is True


def test_files_upload_v2_stores_the_bytes(emulator: SlackEmulator, client: WebClient) -> None:
    parent = client.chat_postMessage(channel="C0DEPLOY", text="Breach")["ts"]

    result = client.files_upload_v2(
        channel="C0DEPLOY",
        content=PNG,
        filename="chart.png",
        title="error_rate around the deploy",
        initial_comment="KPI chart",
        thread_ts=parent,
    )

    file_id = result["file"]["id"]
    assert result["files"][0]["title"] == "error_rate around the deploy"
    assert [c.method for c in emulator.calls()][1:] == [
        "files.getUploadURLExternal",
        "upload",
        "files.completeUploadExternal",
    ]
    get_url = emulator.calls("files.getUploadURLExternal")[0]
    assert get_url.body["filename"] == "chart.png"
    assert get_url.body["length"] == str(len(PNG))
    complete = emulator.calls("files.completeUploadExternal")[0]
    assert complete.body["channel_id"] == "C0DEPLOY"
    assert complete.body["thread_ts"] == parent
    assert complete.body["initial_comment"] == "KPI chart"
    assert complete.body["files"] == [{"id": file_id, "title": "error_rate around the deploy"}]

    uploaded = emulator.uploaded_files()[file_id]
    assert uploaded["bytes"] == PNG
    assert uploaded["filename"] == "chart.png"
    assert uploaded["channel"] == "C0DEPLOY"
    assert uploaded["thread_ts"] == parent
    [shared] = emulator.replies("C0DEPLOY", parent)
    assert shared["files"][0]["id"] == file_id
    assert shared["text"] == "KPI chart"

    download = urllib.request.Request(
        result["file"]["url_private"], headers={"Authorization": "Bearer xoxb-test"}
    )
    with urllib.request.urlopen(download, timeout=5) as response:
        assert response.read() == PNG


def test_upload_url_accepts_multipart(emulator: SlackEmulator, client: WebClient) -> None:
    issued = client.files_getUploadURLExternal(filename="chart.png", length=len(PNG))
    boundary = "----emulatortest"
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="chart.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + PNG
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        issued["upload_url"],
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.read() == f"OK - {len(PNG)}".encode()

    assert emulator.uploaded_files()[issued["file_id"]]["bytes"] == PNG


def test_auth_errors(emulator: SlackEmulator) -> None:
    wrong = WebClient(base_url=emulator.base_url, token="xoxb-wrong")
    with pytest.raises(SlackApiError) as invalid:
        wrong.chat_postMessage(channel="C0DEPLOY", text="hi")
    assert invalid.value.response.status_code == 200
    assert invalid.value.response.data == {"ok": False, "error": "invalid_auth"}

    anonymous = WebClient(base_url=emulator.base_url)
    with pytest.raises(SlackApiError) as missing:
        anonymous.auth_test()
    assert missing.value.response["error"] == "not_authed"
    assert [c.error for c in emulator.calls()] == ["invalid_auth", "not_authed"]


def test_unknown_channel_method_and_no_text() -> None:
    with SlackEmulator(channels={"C0DEPLOY": "deploys"}) as emulator:
        client = emulator.web_client()
        with pytest.raises(SlackApiError) as unknown:
            client.chat_postMessage(channel="C0NOPE", text="hi")
        assert unknown.value.response["error"] == "channel_not_found"
        assert client.chat_postMessage(channel="#deploys", text="by name")["channel"] == "C0DEPLOY"

        # slack_sdk itself warns (an error under filterwarnings=error) when text is left out.
        with pytest.raises(SlackApiError) as no_text, pytest.warns(UserWarning, match="`text`"):
            client.chat_postMessage(channel="C0DEPLOY")
        assert no_text.value.response["error"] == "no_text"

        with pytest.raises(SlackApiError) as unimplemented:
            client.api_call("pins.add", params={"channel": "C0DEPLOY"})
        assert unimplemented.value.response["error"] == "unknown_method"
        assert emulator.calls("pins.add")[0].body == {"channel": "C0DEPLOY"}

        with pytest.raises(SlackApiError) as too_many:
            client.chat_postMessage(channel="C0DEPLOY", text="x", blocks=[BUTTONS[0]] * 51)
        assert too_many.value.response["error"] == "invalid_blocks"
        assert too_many.value.response["response_metadata"]["messages"]


def test_rate_limit_without_retry_handler_raises(emulator: SlackEmulator) -> None:
    emulator.rate_limit_next("chat.postMessage", retry_after=7)
    client = emulator.web_client()

    with pytest.raises(SlackApiError) as limited:
        client.chat_postMessage(channel="C0DEPLOY", text="hi")

    assert limited.value.response.status_code == 429
    assert limited.value.response.headers["Retry-After"] == "7"
    assert limited.value.response.data == {"ok": False, "error": "ratelimited"}


def test_rate_limit_retry_handler_retries_then_succeeds(emulator: SlackEmulator) -> None:
    emulator.rate_limit_next("chat.postMessage", retry_after=1)
    client = emulator.web_client(retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1)])

    started = time.monotonic()
    posted = client.chat_postMessage(channel="C0DEPLOY", text="hi")

    assert posted["ok"] is True
    assert time.monotonic() - started >= 1.0, "the handler waits Retry-After seconds"
    attempts = emulator.calls("chat.postMessage")
    assert [(c.status, c.error) for c in attempts] == [(429, "ratelimited"), (200, None)]
    assert len(emulator.messages("C0DEPLOY")) == 1


def test_fail_next_and_latency(emulator: SlackEmulator, client: WebClient) -> None:
    emulator.fail_next("chat.update", "message_not_found", times=2)
    ts = client.chat_postMessage(channel="C0DEPLOY", text="hi")["ts"]
    for _ in range(2):
        with pytest.raises(SlackApiError):
            client.chat_update(channel="C0DEPLOY", ts=ts, text="x")
    assert client.chat_update(channel="C0DEPLOY", ts=ts, text="x")["ok"]

    emulator.set_latency("auth.test", 0.3)
    started = time.monotonic()
    client.auth_test()
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize("error", [*AUTH_ERRORS, *CHANNEL_ERRORS])
def test_fail_calls_answers_slacks_error_shape_until_healed(
    emulator: SlackEmulator, client: WebClient, error: str
) -> None:
    emulator.fail_calls(error)
    for call in (
        lambda: client.chat_postMessage(channel="C0DEPLOY", text="hi"),
        lambda: client.chat_update(channel="C0DEPLOY", ts="1.2", text="x"),
        client.auth_test,
    ):
        with pytest.raises(SlackApiError) as failed:
            call()
        assert failed.value.response.status_code == 200
        assert failed.value.response.data == {"ok": False, "error": error}
    assert emulator.messages("C0DEPLOY") == [], "a failed call changes nothing"

    emulator.heal()
    assert client.chat_postMessage(channel="C0DEPLOY", text="hi")["ok"]
    assert [c.error for c in emulator.calls()] == [error, error, error, None]


def test_fail_calls_of_one_method_leaves_the_others(
    emulator: SlackEmulator, client: WebClient
) -> None:
    emulator.fail_calls("not_in_channel", methods=["chat.postMessage"])
    with pytest.raises(SlackApiError) as refused:
        client.chat_postMessage(channel="C0DEPLOY", text="hi")
    assert refused.value.response["error"] == "not_in_channel"
    assert client.auth_test()["ok"]
    emulator.heal(["chat.postMessage"])
    assert client.chat_postMessage(channel="C0DEPLOY", text="hi")["ok"]


def test_a_5xx_with_a_body_that_is_not_json(emulator: SlackEmulator, client: WebClient) -> None:
    emulator.fail_with_status(503)
    with pytest.raises(SlackApiError) as down:
        client.chat_postMessage(channel="C0DEPLOY", text="hi")
    assert down.value.response.status_code == 503
    assert "<html>" in str(down.value.response["error"]), "slack_sdk reports the body it got"
    assert emulator.messages("C0DEPLOY") == []
    [call] = emulator.calls("chat.postMessage")
    assert call.status == 503 and call.body["text"] == "hi"

    webhook = WebhookClient(emulator.response_url("R1"))
    assert webhook.send(text="later").status_code == 503
    with pytest.raises(ValueError):
        emulator.fail_with_status(404)
    emulator.heal()
    assert client.chat_postMessage(channel="C0DEPLOY", text="hi")["ok"]
    assert webhook.send(text="now").status_code == 200


def test_held_calls_outlast_the_clients_timeout(emulator: SlackEmulator) -> None:
    emulator.hold_calls(1.5, methods=[ALL_METHODS])
    impatient = emulator.web_client(timeout=0.5)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        impatient.chat_postMessage(channel="C0DEPLOY", text="hi")
    assert 0.5 <= time.monotonic() - started < 1.4
    # The emulator answers 504 once the hold is over, and nothing was posted.
    [call] = emulator.wait_for("chat.postMessage", timeout=5)
    assert call.status == 504
    assert emulator.messages("C0DEPLOY") == []
    emulator.heal()
    assert impatient.chat_postMessage(channel="C0DEPLOY", text="hi")["ok"]


def test_views_open_update_and_trigger_reuse(emulator: SlackEmulator, client: WebClient) -> None:
    modal = {
        "type": "modal",
        "callback_id": "five_whys",
        "title": {"type": "plain_text", "text": "Five whys"},
        "private_metadata": "incident-1",
        "blocks": [],
    }
    opened = client.views_open(trigger_id="123.456.abc", view=modal)["view"]
    assert opened["id"].startswith("V")
    assert opened["callback_id"] == "five_whys"

    with pytest.raises(SlackApiError) as reused:
        client.views_open(trigger_id="123.456.abc", view=modal)
    assert reused.value.response["error"] == "exchanged_trigger_id"

    updated = client.views_update(view_id=opened["id"], view={**modal, "private_metadata": "x"})
    assert updated["view"]["id"] == opened["id"]
    latest = emulator.latest_view("five_whys")
    assert latest is not None
    assert latest["private_metadata"] == "x"

    with pytest.raises(SlackApiError) as stale:
        client.views_update(view_id=opened["id"], view=modal, hash=opened["hash"])
    assert stale.value.response["error"] == "hash_conflict"

    home = client.views_publish(user_id="U0DEV1", view={"type": "home", "blocks": []})
    assert home["view"]["type"] == "home"


def test_response_url_records_posts(emulator: SlackEmulator) -> None:
    url = emulator.response_url(channel="C0DEPLOY", user="U0DEV1")

    sent = WebhookClient(url).send(text="Refused: web is halted", response_type="ephemeral")

    assert sent.status_code == 200
    assert sent.body == "ok"
    [post] = emulator.wait_for_response(lambda p: "halted" in (p.text or ""), id=url)
    assert post.body == {"text": "Refused: web is halted", "response_type": "ephemeral"}
    assert post.headers["Content-Type"] == "application/json;charset=utf-8"
    assert emulator.ephemerals(user="U0DEV1")[0]["text"] == "Refused: web is halted"

    WebhookClient(url).send(text="Deploying", response_type="in_channel")
    assert emulator.messages("C0DEPLOY")[0]["text"] == "Deploying"


def test_response_url_replaces_the_original_message(
    emulator: SlackEmulator, client: WebClient
) -> None:
    ts = client.chat_postMessage(channel="C0DEPLOY", text="Approve?", blocks=BUTTONS)["ts"]
    url = emulator.response_url("approval", channel="C0DEPLOY", message_ts=ts)

    WebhookClient(url).send(text="Approved by <@U0LEAD>", replace_original=True)

    assert emulator.responses("approval")[0].body["replace_original"] is True
    stored = emulator.message("C0DEPLOY", ts)
    assert stored is not None
    assert stored["text"] == "Approved by <@U0LEAD>"
    assert "blocks" not in stored


def test_wait_for_timeout_says_what_happened(emulator: SlackEmulator, client: WebClient) -> None:
    client.chat_postMessage(channel="C0DEPLOY", text="something else")

    with pytest.raises(AssertionError) as timeout:
        emulator.wait_for("chat.update", timeout=0.2)

    message = str(timeout.value)
    assert "chat.update" in message
    assert 'chat.postMessage {"channel": "C0DEPLOY", "text": "something else"}' in message

    with pytest.raises(AssertionError) as no_response:
        emulator.wait_for_response(lambda p: p.body["text"] == "never", timeout=0.1)
    assert "response_url" in str(no_response.value)


def test_wait_for_blocks_until_the_call_arrives(emulator: SlackEmulator, client: WebClient) -> None:
    timer = threading.Timer(0.2, lambda: client.chat_postMessage(channel="C0DEPLOY", text="late"))
    timer.start()
    try:
        [call] = emulator.wait_for("chat.postMessage", lambda c: c.body["text"] == "late", 5)
    finally:
        timer.join()
    assert call.ok


# ---------------------------------------------------------------------- signed client + bolt


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


@dataclass
class BoltBot:
    url: str
    seen: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def wait_seen(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for seen_kind, body in self.seen:
                if seen_kind == kind:
                    return body
            time.sleep(0.02)
        raise AssertionError(f"listener for {kind} not called; seen: {self.seen}")


@pytest.fixture
def bolt_bot(emulator: SlackEmulator) -> Iterator[BoltBot]:
    app = App(
        signing_secret=SIGNING_SECRET,
        client=WebClient(base_url=emulator.base_url, token="xoxb-test"),
        token_verification_enabled=False,
    )
    server = make_server(
        "127.0.0.1",
        0,
        SlackRequestHandler(app),
        server_class=_ThreadingWSGIServer,
        handler_class=_QuietHandler,
    )
    bot = BoltBot(url=f"http://127.0.0.1:{server.server_port}")

    @app.command("/deploy")
    def deploy(ack: Ack, command: dict[str, Any], respond: Respond) -> None:
        ack("Checking policy…")
        bot.seen.append(("command", command))
        respond(f"Deploying {command['text']}")

    @app.action("deploy_approve")
    def approve(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
        ack()
        bot.seen.append(("action", body))
        respond(text="Approved", replace_original=True)

    @app.action("five_whys_open")
    def open_modal(ack: Ack, body: dict[str, Any], client: WebClient) -> None:
        ack()
        view = client.views_open(
            trigger_id=body["trigger_id"],
            view={
                "type": "modal",
                "callback_id": "five_whys",
                "private_metadata": "incident-7",
                "title": {"type": "plain_text", "text": "Five whys"},
                "submit": {"type": "plain_text", "text": "Save"},
                "blocks": [
                    {
                        "type": "input",
                        "block_id": "why_1",
                        "label": {"type": "plain_text", "text": "Why 1"},
                        "element": {"type": "plain_text_input", "action_id": "answer"},
                    }
                ],
            },
        )
        # Recorded only once views.open has answered: the emulator logs the call before
        # its answer reaches this thread, so waiting on the emulator alone races this line.
        bot.seen.append(("opened", view["view"]))

    @app.view("five_whys")
    def submit(ack: Ack, body: dict[str, Any]) -> None:
        ack()
        bot.seen.append(("view", body))

    @app.event("message")
    def on_message(body: dict[str, Any]) -> None:
        bot.seen.append(("message", body))

    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield bot
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def slack(bolt_bot: BoltBot, emulator: SlackEmulator) -> SignedSlackClient:
    return SignedSlackClient(bolt_bot.url, SIGNING_SECRET, emulator)


def test_command_reaches_the_listener(
    slack: SignedSlackClient, bolt_bot: BoltBot, emulator: SlackEmulator
) -> None:
    reply = slack.command("/deploy", "web 1.4.2", user_id="U0DEV1", channel_id="C0DEPLOY")

    assert reply.status == 200
    assert reply.text == "Checking policy…"
    command = bolt_bot.wait_seen("command")
    assert command["command"] == "/deploy"
    assert command["text"] == "web 1.4.2"
    assert command["user_id"] == "U0DEV1"
    assert command["channel_id"] == "C0DEPLOY"
    assert command["team_id"] == emulator.team_id
    assert command["api_app_id"] == emulator.app_id
    assert command["trigger_id"]
    assert command["response_url"] == reply.response_url
    [answer] = emulator.wait_for_response(id=reply.response_url)
    assert answer.text == "Deploying web 1.4.2"
    assert emulator.calls("auth.test"), "bolt authorizes against the emulator"


@pytest.mark.parametrize("fault", ["bad-signature", "stale-timestamp"])
def test_unsigned_requests_are_refused(
    slack: SignedSlackClient, bolt_bot: BoltBot, fault: str
) -> None:
    if fault == "bad-signature":
        reply = slack.command("/deploy", "web 1.4.2", bad_signature=True)
    else:
        reply = slack.command("/deploy", "web 1.4.2", timestamp=int(time.time()) - 6 * 60)

    assert reply.status == 401
    time.sleep(0.2)
    assert bolt_bot.seen == []


def test_block_action_carries_the_stored_message(
    slack: SignedSlackClient, bolt_bot: BoltBot, emulator: SlackEmulator, client: WebClient
) -> None:
    ts = client.chat_postMessage(channel="C0DEPLOY", text="Approve?", blocks=BUTTONS)["ts"]

    reply = slack.block_action("deploy_approve", message_ts=ts, user_id="U0LEAD", retry_num=1)

    assert reply.status == 200
    body = bolt_bot.wait_seen("action")
    [action] = body["actions"]
    assert action["action_id"] == "deploy_approve"
    assert action["block_id"] == "approval"
    assert action["value"] == "rollout-1"
    assert action["text"]["text"] == "Approve"
    assert body["user"]["id"] == "U0LEAD"
    assert body["container"] == {
        "type": "message",
        "message_ts": ts,
        "channel_id": "C0DEPLOY",
        "is_ephemeral": False,
    }
    assert body["message"]["blocks"][1]["block_id"] == "approval"
    emulator.wait_for_response(lambda p: p.body.get("replace_original") is True)
    stored = emulator.message("C0DEPLOY", ts)
    assert stored is not None
    assert stored["text"] == "Approved"


def test_view_submission_after_views_open(
    slack: SignedSlackClient, bolt_bot: BoltBot, emulator: SlackEmulator, client: WebClient
) -> None:
    ts = client.chat_postMessage(
        channel="C0DEPLOY",
        text="Breach",
        blocks=[
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "action_id": "five_whys_open",
                        "text": {"type": "plain_text", "text": "Five whys"},
                        "value": "incident-7",
                    }
                ],
            }
        ],
    )["ts"]
    slack.block_action("five_whys_open", message_ts=ts)
    emulator.wait_for("views.open")
    opened = bolt_bot.wait_seen("opened")

    reply = slack.view_submission("five_whys", {"why_1": {"answer": "a bad config"}})

    assert reply.status == 200
    view = bolt_bot.wait_seen("view")["view"]
    assert view["id"] == opened["id"]
    assert view["private_metadata"] == "incident-7"
    assert view["state"]["values"]["why_1"]["answer"]["value"] == "a bad config"


def test_events_and_url_verification(
    slack: SignedSlackClient, bolt_bot: BoltBot, emulator: SlackEmulator, client: WebClient
) -> None:
    assert slack.url_verification("abc123").json() == {"challenge": "abc123"}

    parent = client.chat_postMessage(channel="C0DEPLOY", text="Breach")["ts"]
    reply = slack.send_message(
        "C0DEPLOY", "U0DEV1", "test: <https://ci.example/t/1|the test>", thread_ts=parent
    )

    assert reply.status == 200
    envelope = bolt_bot.wait_seen("message")
    event = envelope["event"]
    assert envelope["type"] == "event_callback"
    assert envelope["event_id"].startswith("Ev")
    assert event["thread_ts"] == parent
    assert event["parent_user_id"] == emulator.bot_user_id
    assert event["text"] == "test: <https://ci.example/t/1|the test>"
    link = event["blocks"][0]["elements"][0]["elements"][1]
    assert link == {"type": "link", "url": "https://ci.example/t/1", "text": "the test"}
    assert emulator.replies("C0DEPLOY", parent)[0]["text"] == event["text"]


def test_message_changed_event(slack: SignedSlackClient, emulator: SlackEmulator) -> None:
    ts = emulator.add_message("C0DEPLOY", "why 2: typo", user="U0DEV1")

    event = slack.message_event("C0DEPLOY", "U0DEV1", "why 2: config drift", ts=ts, edited=True)

    assert event["subtype"] == "message_changed"
    assert event["hidden"] is True
    assert event["message"]["ts"] == ts
    assert event["message"]["text"] == "why 2: config drift"
    assert event["message"]["edited"]["user"] == "U0DEV1"
    assert event["previous_message"]["text"] == "why 2: typo"
    assert event["ts"] != ts
