"""Send requests to a bot's `POST /slack/events` exactly as Slack does, signed.

Slash commands and interactivity go form-encoded (interactivity as `payload=<json>`), Events
API callbacks as JSON; every request carries `X-Slack-Request-Timestamp` and a v0
`X-Slack-Signature` made with `slack_sdk.signature.SignatureVerifier`. Given a
`SlackEmulator`, the client hands out `response_url`s on it, registers `trigger_id`s with it
and fills payloads (the clicked message, an opened modal) from what the emulator holds.

    slack = SignedSlackClient("http://127.0.0.1:3000", signing_secret, emulator)
    reply = slack.command("/deploy", "web 1.4.2")
    assert reply.status == 200
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from slack_sdk.signature import SignatureVerifier

from tests.support.slack_emulator import SlackEmulator

JsonDict = dict[str, Any]

DEFAULT_USER = "U0DEV1"
DEFAULT_CHANNEL = "C0DEPLOY"
DEFAULT_TEAM = "T0TEAM"
SIGNATURE_MAX_AGE_SECONDS = 5 * 60
"""Bolt (and Slack's guidance) refuse a request whose timestamp is older than this."""

_SLACK_HEADERS = {
    "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
    "Accept": "application/json,*/*",
}
# A typed link or mention arrives as <https://…>, <https://…|label> or <@U123>.
_MARKUP = re.compile(r"<([^<>|]+)(?:\|([^<>]*))?>")


@dataclass(frozen=True)
class SlackHttpResponse:
    """What the bot answered, and what was sent to it."""

    status: int
    headers: dict[str, str]
    """Header names lower-cased."""
    text: str
    sent: JsonDict = field(default_factory=dict)
    """The form (command) or payload/envelope (interactivity, events) that was sent."""

    def json(self) -> Any:
        return json.loads(self.text)

    @property
    def response_url(self) -> str | None:
        """The response_url the request carried, if any."""
        value = self.sent.get("response_url")
        return value if isinstance(value, str) else None


class SignedSlackClient:
    """Plays Slack's side of the HTTP contract against a running bot.

    Args:
        bot_url: the bot's base URL (`http://127.0.0.1:3000`); `/slack/events` is added
            unless the URL already names a path.
        signing_secret: the app's signing secret, as the bot has it.
        emulator: where response_urls point and where clicked messages and modals are read.
        timeout: seconds to wait for the bot's answer.
    """

    def __init__(
        self,
        bot_url: str,
        signing_secret: str,
        emulator: SlackEmulator | None = None,
        *,
        timeout: float = 10.0,
        verification_token: str = "legacy-verification-token",
    ) -> None:
        base = bot_url.rstrip("/")
        self.url = base if base.split("://", 1)[-1].count("/") else f"{base}/slack/events"
        self.signing_secret = signing_secret
        self.emulator = emulator
        self.timeout = timeout
        self.verification_token = verification_token
        self.team_id = emulator.team_id if emulator else DEFAULT_TEAM
        self.team_domain = emulator.team_domain if emulator else "immune-test"
        self.api_app_id = emulator.app_id if emulator else "A0IMMUNE"
        self.bot_user_id = emulator.bot_user_id if emulator else "U0BOT"
        self._verifier = SignatureVerifier(signing_secret)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._last_ts_us = 0
        # Plain urllib without proxies: the bot is local, whatever the environment says.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # ------------------------------------------------------------------ low level

    def post(
        self,
        body: str,
        content_type: str,
        *,
        timestamp: int | None = None,
        bad_signature: bool = False,
        retry_num: int | None = None,
        retry_reason: str | None = None,
        headers: dict[str, str] | None = None,
        sent: JsonDict | None = None,
    ) -> SlackHttpResponse:
        """POST a raw body, signed like Slack signs it.

        Args:
            timestamp: the `X-Slack-Request-Timestamp` (default now); one more than five
                minutes old makes a stale request.
            bad_signature: sign with the wrong secret.
            retry_num, retry_reason: Slack's redelivery headers (`http_timeout`, ...).
        """
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        verifier = SignatureVerifier(f"not-{self.signing_secret}") if bad_signature else None
        signature = (verifier or self._verifier).generate_signature(timestamp=stamp, body=body)
        request_headers = {
            **_SLACK_HEADERS,
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": signature or "",
        }
        if retry_num is not None:
            request_headers["X-Slack-Retry-Num"] = str(retry_num)
            request_headers["X-Slack-Retry-Reason"] = retry_reason or "http_timeout"
        request_headers.update(headers or {})
        request = urllib.request.Request(
            self.url, data=body.encode("utf-8"), headers=request_headers, method="POST"
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as reply:
                return _response(reply.status, reply.headers.items(), reply.read(), sent)
        except urllib.error.HTTPError as err:
            with err:
                return _response(err.code, err.headers.items(), err.read(), sent)

    def post_form(self, form: JsonDict, **options: Any) -> SlackHttpResponse:
        return self.post(urlencode(form), "application/x-www-form-urlencoded", sent=form, **options)

    def post_payload(self, payload: JsonDict, **options: Any) -> SlackHttpResponse:
        """Interactivity: `payload=<json>`, form-encoded."""
        body = urlencode({"payload": json.dumps(payload, separators=(",", ":"))})
        return self.post(body, "application/x-www-form-urlencoded", sent=payload, **options)

    def post_json(self, envelope: JsonDict, **options: Any) -> SlackHttpResponse:
        """Events API: a JSON body."""
        body = json.dumps(envelope, separators=(",", ":"))
        return self.post(body, "application/json", sent=envelope, **options)

    # ------------------------------------------------------------------ slash commands

    def command(
        self,
        command: str,
        text: str = "",
        *,
        user_id: str = DEFAULT_USER,
        user_name: str | None = None,
        channel_id: str = DEFAULT_CHANNEL,
        team_id: str | None = None,
        response_url: str | None = None,
        trigger_id: str | None = None,
        retry_num: int | None = None,
        retry_reason: str | None = None,
        timestamp: int | None = None,
        bad_signature: bool = False,
    ) -> SlackHttpResponse:
        """A slash command, with the full form Slack sends.

        Without `response_url`, one on the emulator is made (ephemeral answers are kept for
        `user_id`, `in_channel` ones posted to `channel_id`); without an emulator it points at
        an unused local port.
        """
        form = {
            "token": self.verification_token,
            "team_id": team_id or self.team_id,
            "team_domain": self.team_domain,
            "channel_id": channel_id,
            "channel_name": self._channel_name(channel_id),
            "user_id": user_id,
            "user_name": user_name or self._user_name(user_id),
            "command": command,
            "text": text,
            "api_app_id": self.api_app_id,
            "is_enterprise_install": "false",
            "response_url": response_url or self._response_url(channel=channel_id, user=user_id),
            "trigger_id": trigger_id or self.new_trigger_id(),
        }
        return self.post_form(
            form,
            timestamp=timestamp,
            bad_signature=bad_signature,
            retry_num=retry_num,
            retry_reason=retry_reason,
        )

    # ------------------------------------------------------------------ interactivity

    def block_action(
        self,
        action_id: str,
        value: str | None = None,
        *,
        message_ts: str,
        user_id: str = DEFAULT_USER,
        channel_id: str = DEFAULT_CHANNEL,
        block_id: str | None = None,
        response_url: str | None = None,
        trigger_id: str | None = None,
        message: JsonDict | None = None,
        retry_num: int | None = None,
        retry_reason: str | None = None,
        timestamp: int | None = None,
        bad_signature: bool = False,
    ) -> SlackHttpResponse:
        """A click on a button in a channel message (`block_actions`).

        The message defaults to the one the emulator holds at `message_ts`; `block_id`, the
        button's text, style and (when `value` is None) value are read from its blocks.
        """
        if message is None and self.emulator is not None:
            message = self.emulator.message(channel_id, message_ts)
        if message is None:
            message = {
                "type": "message",
                "user": self.bot_user_id,
                "ts": message_ts,
                "text": "",
                "team": self.team_id,
                "blocks": [],
            }
        found_block_id, element = _find_action(message.get("blocks") or [], action_id)
        action: JsonDict = {
            "action_id": action_id,
            "block_id": block_id or found_block_id or secrets.token_urlsafe(3),
            "text": element.get("text") or {"type": "plain_text", "text": action_id, "emoji": True},
            "value": value if value is not None else element.get("value", ""),
            "type": element.get("type", "button"),
            "action_ts": self._next_ts(),
        }
        if element.get("style"):
            action["style"] = element["style"]
        container: JsonDict = {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel_id,
            "is_ephemeral": False,
        }
        if message.get("thread_ts") and message.get("thread_ts") != message_ts:
            container["thread_ts"] = message["thread_ts"]
        url = response_url or self._response_url(
            channel=channel_id, message_ts=message_ts, user=user_id
        )
        payload: JsonDict = {
            "type": "block_actions",
            "user": self._user(user_id),
            "api_app_id": self.api_app_id,
            "token": self.verification_token,
            "container": container,
            "trigger_id": trigger_id or self.new_trigger_id(),
            "team": {"id": self.team_id, "domain": self.team_domain},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": channel_id, "name": self._channel_name(channel_id)},
            "message": message,
            "state": {"values": {}},
            "response_url": url,
            "actions": [action],
        }
        return self.post_payload(
            payload,
            timestamp=timestamp,
            bad_signature=bad_signature,
            retry_num=retry_num,
            retry_reason=retry_reason,
        )

    def view_block_action(
        self,
        view: JsonDict,
        action_id: str,
        *,
        value: str | None = None,
        selected: str | None = None,
        user_id: str = DEFAULT_USER,
    ) -> SlackHttpResponse:
        """A press on a button, or a choice in a select that dispatches actions, inside an
        open modal (`block_actions` from a view: no channel, no response_url)."""
        found_block_id, element = _find_action(view.get("blocks") or [], action_id)
        action: JsonDict = {
            "action_id": action_id,
            "block_id": found_block_id or secrets.token_urlsafe(3),
            "type": element.get("type", "button"),
            "action_ts": self._next_ts(),
        }
        if selected is not None:
            action["selected_option"] = {
                "text": {"type": "plain_text", "text": selected, "emoji": True},
                "value": selected,
            }
        else:
            action["value"] = value if value is not None else element.get("value", "")
            action["text"] = element.get("text") or {"type": "plain_text", "text": action_id}
        payload: JsonDict = {
            "type": "block_actions",
            "user": self._user(user_id),
            "api_app_id": self.api_app_id,
            "token": self.verification_token,
            "container": {"type": "view", "view_id": view.get("id", "")},
            "trigger_id": self.new_trigger_id(),
            "team": {"id": self.team_id, "domain": self.team_domain},
            "enterprise": None,
            "is_enterprise_install": False,
            "view": view,
            "actions": [action],
        }
        return self.post_payload(payload)

    def view_submission(
        self,
        callback_id: str,
        state_values: JsonDict,
        *,
        user_id: str = DEFAULT_USER,
        private_metadata: str | None = None,
        view_id: str | None = None,
        timestamp: int | None = None,
        bad_signature: bool = False,
    ) -> SlackHttpResponse:
        """A modal submitted (`view_submission`).

        Args:
            state_values: `{block_id: {action_id: value}}`, in Slack's shape
                (`{"type": "plain_text_input", "value": "..."}`) or as plain strings.
            private_metadata: default: the opened view's, else "".
            view_id: default: the view the emulator last opened with this callback_id.
        """
        opened = None
        if self.emulator is not None:
            opened = self.emulator.view(view_id) if view_id else None
            opened = opened or self.emulator.latest_view(callback_id)
        opened = opened or {}
        view_id = view_id or opened.get("id") or f"V{next(self._ids):010d}"
        view: JsonDict = {
            "id": view_id,
            "team_id": self.team_id,
            "type": "modal",
            "blocks": opened.get("blocks", []),
            "private_metadata": (
                private_metadata
                if private_metadata is not None
                else opened.get("private_metadata", "")
            ),
            "callback_id": callback_id,
            "state": {"values": _state_values(state_values)},
            "hash": opened.get("hash") or f"{int(time.time())}.{secrets.token_hex(4)}",
            "title": opened.get("title") or {"type": "plain_text", "text": "Modal", "emoji": True},
            "clear_on_close": opened.get("clear_on_close", False),
            "notify_on_close": opened.get("notify_on_close", False),
            "close": opened.get("close"),
            "submit": opened.get("submit") or {"type": "plain_text", "text": "Submit"},
            "previous_view_id": opened.get("previous_view_id"),
            "root_view_id": opened.get("root_view_id", view_id),
            "app_id": self.api_app_id,
            "external_id": opened.get("external_id", ""),
            "app_installed_team_id": self.team_id,
            "bot_id": self.emulator.bot_id if self.emulator else "B0BOT",
        }
        payload: JsonDict = {
            "type": "view_submission",
            "team": {"id": self.team_id, "domain": self.team_domain},
            "user": self._user(user_id),
            "api_app_id": self.api_app_id,
            "token": self.verification_token,
            "trigger_id": self.new_trigger_id(),
            "view": view,
            "response_urls": [],
            "is_enterprise_install": False,
            "enterprise": None,
        }
        return self.post_payload(payload, timestamp=timestamp, bad_signature=bad_signature)

    # ------------------------------------------------------------------ Events API

    def event(
        self,
        event: JsonDict,
        *,
        event_id: str | None = None,
        event_time: int | None = None,
        retry_num: int | None = None,
        retry_reason: str | None = None,
        timestamp: int | None = None,
        bad_signature: bool = False,
    ) -> SlackHttpResponse:
        """An `event_callback` envelope around `event`; resend with the same `event_id` and
        `retry_num` to play Slack's redelivery."""
        envelope: JsonDict = {
            "token": self.verification_token,
            "team_id": self.team_id,
            "context_team_id": self.team_id,
            "context_enterprise_id": None,
            "api_app_id": self.api_app_id,
            "event": event,
            "type": "event_callback",
            "event_id": event_id or f"Ev{next(self._ids):04d}{secrets.token_hex(3).upper()}",
            "event_time": event_time or int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": self.team_id,
                    "user_id": self.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": f"4-{secrets.token_urlsafe(24)}",
        }
        return self.post_json(
            envelope,
            timestamp=timestamp,
            bad_signature=bad_signature,
            retry_num=retry_num,
            retry_reason=retry_reason,
        )

    def url_verification(self, challenge: str) -> SlackHttpResponse:
        envelope = {
            "token": self.verification_token,
            "challenge": challenge,
            "type": "url_verification",
        }
        return self.post_json(envelope)

    def message_event(
        self,
        channel: str,
        user: str,
        text: str,
        *,
        thread_ts: str | None = None,
        ts: str | None = None,
        edited: bool = False,
        previous_text: str | None = None,
        channel_type: str = "channel",
    ) -> JsonDict:
        """A `message` event as Slack delivers it; with `edited`, a `message_changed` one.

        For an edit, `ts` is the edited message's; `previous_text` defaults to its text in
        the emulator.
        """
        if not edited:
            ts = ts or self._next_ts()
            message = self._user_message(channel, user, text, ts, thread_ts)
            return {**message, "channel": channel, "event_ts": ts, "channel_type": channel_type}
        if ts is None:
            raise ValueError("an edit needs the ts of the message edited")
        stored = self.emulator.message(channel, ts) if self.emulator else None
        if previous_text is None:
            previous_text = str(stored.get("text", "")) if stored else ""
        thread_ts = thread_ts or (stored or {}).get("thread_ts")
        edit_ts = self._next_ts()
        current = self._user_message(channel, user, text, ts, thread_ts)
        current["edited"] = {"user": user, "ts": edit_ts}
        current.update({"source_team": self.team_id, "user_team": self.team_id})
        previous = self._user_message(channel, user, previous_text, ts, thread_ts)
        if stored and stored.get("client_msg_id"):
            current["client_msg_id"] = previous["client_msg_id"] = stored["client_msg_id"]
        else:
            current["client_msg_id"] = previous["client_msg_id"]
        return {
            "type": "message",
            "subtype": "message_changed",
            "message": current,
            "previous_message": previous,
            "channel": channel,
            "hidden": True,
            "ts": edit_ts,
            "event_ts": edit_ts,
            "channel_type": channel_type,
        }

    def send_message(
        self,
        channel: str,
        user: str,
        text: str,
        *,
        thread_ts: str | None = None,
        ts: str | None = None,
        edited: bool = False,
        retry_num: int | None = None,
    ) -> SlackHttpResponse:
        """A person posts (or edits) a message: stored in the emulator, then delivered."""
        if self.emulator is not None:
            if edited and ts is not None and self.emulator.message(channel, ts) is not None:
                previous = self.emulator.edit_message(channel, ts, text)
                event = self.message_event(
                    channel,
                    user,
                    text,
                    thread_ts=thread_ts,
                    ts=ts,
                    edited=True,
                    previous_text=str(previous.get("text", "")),
                )
                return self.event(event, retry_num=retry_num)
            if not edited:
                ts = ts or self._next_ts()
                self.emulator.add_message(channel, text, user=user, ts=ts, thread_ts=thread_ts)
        event = self.message_event(channel, user, text, thread_ts=thread_ts, ts=ts, edited=edited)
        return self.event(event, retry_num=retry_num)

    # ------------------------------------------------------------------ helpers

    def new_trigger_id(self) -> str:
        """A fresh trigger_id in Slack's shape, registered with the emulator (3 s life)."""
        trigger_id = (
            f"{next(self._ids)}{secrets.randbelow(10**9):09d}."
            f"{secrets.randbelow(10**12):012d}.{secrets.token_hex(16)}"
        )
        if self.emulator is not None:
            self.emulator.register_trigger(trigger_id)
        return trigger_id

    def _next_ts(self) -> str:
        if self.emulator is not None:
            return self.emulator.next_ts()
        with self._lock:
            self._last_ts_us = max(time.time_ns() // 1000, self._last_ts_us + 1)
            return f"{self._last_ts_us // 1_000_000}.{self._last_ts_us % 1_000_000:06d}"

    def _response_url(self, *, channel: str, user: str, message_ts: str | None = None) -> str:
        if self.emulator is not None:
            return self.emulator.response_url(channel=channel, message_ts=message_ts, user=user)
        # Nothing listens on port 9 (discard): a bot answering there fails fast and locally.
        return f"http://127.0.0.1:9/response/{next(self._ids)}-{secrets.token_hex(8)}"

    def _channel_name(self, channel_id: str) -> str:
        return self.emulator.channel_name(channel_id) if self.emulator else channel_id.lower()

    def _user_name(self, user_id: str) -> str:
        return self.emulator.user_name(user_id) if self.emulator else user_id.lower()

    def _user(self, user_id: str) -> JsonDict:
        name = self._user_name(user_id)
        return {"id": user_id, "username": name, "name": name, "team_id": self.team_id}

    def _user_message(
        self, channel: str, user: str, text: str, ts: str, thread_ts: str | None
    ) -> JsonDict:
        message: JsonDict = {
            "user": user,
            "type": "message",
            "ts": ts,
            "client_msg_id": str(uuid.uuid4()),
            "text": text,
            "team": self.team_id,
            "blocks": [_rich_text_block(text)],
        }
        if thread_ts and thread_ts != ts:
            message["thread_ts"] = thread_ts
            parent = self.emulator.message(channel, thread_ts) if self.emulator else None
            if parent is not None and parent.get("user"):
                message["parent_user_id"] = parent["user"]
        return message


def _response(status: int, headers: Any, body: bytes, sent: JsonDict | None) -> SlackHttpResponse:
    return SlackHttpResponse(
        status=status,
        headers={str(k).lower(): str(v) for k, v in headers},
        text=body.decode("utf-8", "replace"),
        sent=sent or {},
    )


def _find_action(blocks: list[JsonDict], action_id: str) -> tuple[str | None, JsonDict]:
    """The block_id and element of the interactive element with this action_id."""
    for block in blocks:
        elements = list(block.get("elements") or [])
        for single in ("accessory", "element"):  # a section's accessory, an input's element
            if isinstance(block.get(single), dict):
                elements.append(block[single])
        for element in elements:
            if isinstance(element, dict) and element.get("action_id") == action_id:
                return block.get("block_id"), element
    return None, {}


def _state_values(values: JsonDict) -> JsonDict:
    """Slack's `view.state.values`, from Slack's shape or `{block: {action: "text"}}`."""
    state: JsonDict = {}
    for block_id, actions in values.items():
        state[block_id] = {}
        for action_id, value in actions.items():
            if isinstance(value, dict):
                state[block_id][action_id] = value
            else:
                state[block_id][action_id] = {"type": "plain_text_input", "value": value}
    return state


def _rich_text_block(text: str) -> JsonDict:
    """The `rich_text` block Slack attaches to a typed message."""
    elements: list[JsonDict] = []
    position = 0
    for match in _MARKUP.finditer(text):
        if match.start() > position:
            elements.append({"type": "text", "text": text[position : match.start()]})
        target, label = match.group(1), match.group(2)
        if target.startswith("@"):
            elements.append({"type": "user", "user_id": target[1:]})
        elif target.startswith("#"):
            elements.append({"type": "channel", "channel_id": target[1:]})
        else:
            link: JsonDict = {"type": "link", "url": target}
            if label:
                link["text"] = label
            elements.append(link)
        position = match.end()
    if position < len(text):
        elements.append({"type": "text", "text": text[position:]})
    return {
        "type": "rich_text",
        "block_id": secrets.token_urlsafe(4)[:5],
        "elements": [{"type": "rich_text_section", "elements": elements}],
    }
