"""A local emulator of the Slack Web API, for tests and the local demo.

It listens on 127.0.0.1 (port 0, so tests can run in parallel), answers the methods the bot
uses with Slack's real response shapes and errors, keeps the state those methods change
(messages per channel, ephemerals, views, uploaded files) and records every call, so a test
can both assert on what the bot sent and on what a person in Slack would now see.

    with SlackEmulator() as slack:
        client = WebClient(base_url=slack.base_url, token="xoxb-test")
        client.chat_postMessage(channel="C0DEPLOY", text="hi")
        [call] = slack.wait_for("chat.postMessage")

Besides the Web API (`/api/<method>`) it serves the upload URLs handed out by
`files.getUploadURLExternal` (`/upload/<file_id>`), private file downloads
(`/files-pri/<file_id>/<name>`) and `response_url`s (`/response/<id>`).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import mimetypes
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message
from email.utils import collapse_rfc2231_value
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlsplit
from zoneinfo import ZoneInfo

from slack_sdk import WebClient

JsonDict = dict[str, Any]

DEFAULT_TOKEN = "xoxb-test"
TRIGGER_LIFETIME_SECONDS = 3.0
"""Slack refuses a `trigger_id` older than this with `expired_trigger_id`."""

# Form-encoded bodies carry these as JSON strings; Call.body holds them decoded.
_JSON_STRING_FIELDS = frozenset(
    {"blocks", "attachments", "view", "files", "metadata", "unfurls", "outputs", "user_auth_blocks"}
)
_MESSAGE_BLOCK_LIMIT = 50
_VIEW_BLOCK_LIMIT = 100
_TEXT_LIMIT = 40_000
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")

_T = TypeVar("_T")

AUTH_ERRORS = ("invalid_auth", "account_inactive", "token_revoked")
"""Slack's answers to a token that no longer works (every method answers them alike)."""
CHANNEL_ERRORS = ("channel_not_found", "not_in_channel", "is_archived")
"""Slack's answers to a post into a channel the bot cannot write to."""
ALL_METHODS = "*"
"""`methods` of a lasting fault that every Web API call and response_url post meets."""


class _ApiError(Exception):
    """An `{"ok": false}` answer, raised from inside a method implementation."""

    def __init__(self, error: str, *messages: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.messages = messages
        self.extra = extra

    def as_response(self) -> JsonDict:
        response: JsonDict = {"ok": False, "error": self.error, **self.extra}
        if self.messages:
            response["response_metadata"] = {"messages": list(self.messages)}
        return response


def _missing(name: str, pointer: str = "") -> _ApiError:
    return _ApiError("invalid_arguments", f"[ERROR] missing required field: {name}{pointer}")


@dataclass(frozen=True)
class _Outage:
    """A lasting fault: every call it covers meets it until `heal()`."""

    error: str | None = None
    """Answer `{"ok": false, "error": error}` (HTTP 200), as Slack does."""
    status: int | None = None
    """Answer this HTTP status (a 5xx) with a body that is not JSON, as Slack's edge does."""
    hold_seconds: float = 0.0
    """Hold the request this long (longer than the client's timeout), then answer 504."""


@dataclass(frozen=True)
class Call:
    """One request the emulator answered (the Web API, or an upload to an upload URL)."""

    method: str
    """Slack method name (`chat.postMessage`), or `upload` for the bytes sent to an upload URL."""
    headers: dict[str, str]
    body: JsonDict
    """Parsed arguments: query string, form or JSON body; JSON-string form fields decoded."""
    response: JsonDict
    status: int
    timestamp: float

    @property
    def ok(self) -> bool:
        return bool(self.response.get("ok"))

    @property
    def error(self) -> str | None:
        error = self.response.get("error")
        return error if isinstance(error, str) else None

    @property
    def token(self) -> str | None:
        return _token_from(self.headers, self.body, is_json=False)

    def header(self, name: str) -> str | None:
        """A request header, whatever the case of its name."""
        return _header(self.headers, name)

    def summary(self, width: int = 160) -> str:
        """One line: method, a shortened body, and the error if the answer was one."""
        shown = {k: v for k, v in self.body.items() if k != "token"}
        text = json.dumps(shown, default=str, ensure_ascii=False)
        if len(text) > width:
            text = text[: width - 1] + "…"
        outcome = "" if self.ok or self.method == "upload" else f" -> {self.status} {self.error}"
        return f"{self.method} {text}{outcome}"


@dataclass(frozen=True)
class ResponseUrlPost:
    """One POST a bot made to a `response_url` handed out by the emulator."""

    id: str
    url: str
    headers: dict[str, str]
    body: JsonDict
    status: int
    timestamp: float

    @property
    def text(self) -> str | None:
        text = self.body.get("text")
        return text if isinstance(text, str) else None

    @property
    def response_type(self) -> str:
        return str(self.body.get("response_type") or "ephemeral")

    def summary(self, width: int = 160) -> str:
        text = json.dumps(self.body, default=str, ensure_ascii=False)
        if len(text) > width:
            text = text[: width - 1] + "…"
        return f"response_url {self.id} {text} -> {self.status}"


@dataclass
class _Channel:
    id: str
    name: str
    is_member: bool = True
    is_private: bool = False
    created: int = field(default_factory=lambda: int(time.time()) - 86_400)

    @property
    def is_im(self) -> bool:
        return self.id.startswith("D")


@dataclass
class _User:
    id: str
    name: str
    real_name: str
    tz: str
    is_admin: bool = False
    is_bot: bool = False


@dataclass
class _Upload:
    file_id: str
    filename: str
    length: int
    alt_txt: str | None
    data: bytes | None = None
    title: str | None = None
    channel: str | None = None
    thread_ts: str | None = None
    initial_comment: str | None = None
    completed: bool = False
    file: JsonDict | None = None


@dataclass
class _ResponseTarget:
    channel: str | None = None
    message_ts: str | None = None
    user: str | None = None
    uses: int = 0
    ephemeral_index: int | None = None


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @classmethod
    def json(cls, payload: JsonDict, status: int = 200, **headers: str) -> _Reply:
        return cls(
            status,
            {"Content-Type": "application/json; charset=utf-8", **headers},
            json.dumps(payload).encode("utf-8"),
        )

    @classmethod
    def text(cls, text: str, status: int = 200) -> _Reply:
        return cls(status, {"Content-Type": "text/plain; charset=utf-8"}, text.encode("utf-8"))


class SlackEmulator:
    """Slack's Web API on 127.0.0.1, with state, a call log and fault injection.

    Args:
        tokens: the tokens accepted; any other gets `invalid_auth`.
        channels: the channels that exist (ids, or a mapping id -> name); `None` accepts any
            channel id. More can be added with `add_channel`.
        users: the users that exist (ids, or a mapping id -> name); `None` accepts any user id.
        default_tz: the `tz` of users not added with `add_user`.
        port: 0 (the default) picks a free port; a fixed one is for the local demo only.
    """

    def __init__(
        self,
        *,
        tokens: Iterable[str] = (DEFAULT_TOKEN,),
        channels: Iterable[str] | Mapping[str, str] | None = None,
        users: Iterable[str] | Mapping[str, str] | None = None,
        team_id: str = "T0TEAM",
        team_name: str = "Immune Test",
        team_domain: str = "immune-test",
        bot_user_id: str = "U0BOT",
        bot_id: str = "B0BOT",
        bot_name: str = "immune",
        app_id: str = "A0IMMUNE",
        default_tz: str = "Europe/London",
        port: int = 0,
    ) -> None:
        self.requested_port = port
        self.team_id = team_id
        self.team_name = team_name
        self.team_domain = team_domain
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.bot_name = bot_name
        self.app_id = app_id
        self.default_tz = default_tz

        self._cond = threading.Condition(threading.RLock())
        self._tokens = set(tokens)
        self._any_channel = channels is None
        self._any_user = users is None
        self._channels: dict[str, _Channel] = {}
        self._users: dict[str, _User] = {}
        for channel_id, name in _id_names(channels):
            self.add_channel(channel_id, name)
        for user_id, name in _id_names(users):
            self.add_user(user_id, name)
        self._users[bot_user_id] = _User(bot_user_id, bot_name, bot_name, default_tz, is_bot=True)

        self._server: _EmulatorServer | None = None
        self._thread: threading.Thread | None = None
        self._ids = itertools.count(1)
        self._last_ts_us = 0
        self._latency: dict[str, float] = {}
        self._rate_limits: dict[str, deque[int]] = {}
        self._failures: dict[str, deque[str]] = {}
        self._outages: dict[str, _Outage] = {}
        self._reset_state()
        # Where apps.connections.open sends Socket Mode clients (tests/support/socket_mode_server).
        self.socket_mode_url: str | None = None
        self._methods: dict[str, Callable[[JsonDict], JsonDict]] = {
            "api.test": self._api_test,
            "apps.connections.open": self._apps_connections_open,
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.delete": self._chat_delete,
            "chat.getPermalink": self._chat_get_permalink,
            "reactions.add": self._reactions_add,
            "conversations.info": self._conversations_info,
            "conversations.history": self._conversations_history,
            "conversations.replies": self._conversations_replies,
            "users.info": self._users_info,
            "views.open": self._views_open,
            "views.update": self._views_update,
            "views.publish": self._views_publish,
            "files.getUploadURLExternal": self._files_get_upload_url_external,
            "files.completeUploadExternal": self._files_complete_upload_external,
        }

    def _reset_state(self) -> None:
        self._calls: list[Call] = []
        self._response_posts: list[ResponseUrlPost] = []
        self._response_targets: dict[str, _ResponseTarget] = {}
        self._messages: dict[str, list[JsonDict]] = {}
        self._ephemerals: list[JsonDict] = []
        self._views: dict[str, JsonDict] = {}
        self._home_views: dict[str, str] = {}
        self._triggers_issued: dict[str, float] = {}
        self._triggers_used: set[str] = set()
        self._uploads: dict[str, _Upload] = {}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> SlackEmulator:
        """Start serving in a daemon thread; returns self."""
        if self._server is None:
            self._server = _EmulatorServer(self, self.requested_port)
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"slack-emulator-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> SlackEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("SlackEmulator is not started")
        return int(self._server.server_address[1])

    @property
    def root_url(self) -> str:
        """`http://127.0.0.1:<port>`, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The Web API base URL, for `WebClient(base_url=...)` and `SLACK_API_URL`."""
        return f"{self.root_url}/api/"

    def web_client(self, token: str = DEFAULT_TOKEN, **kwargs: Any) -> WebClient:
        """A `slack_sdk.WebClient` pointed at this emulator."""
        return WebClient(base_url=self.base_url, token=token, **kwargs)

    # ------------------------------------------------------------------ setup

    def add_token(self, token: str) -> None:
        with self._cond:
            self._tokens.add(token)

    def add_channel(
        self,
        channel_id: str,
        name: str | None = None,
        *,
        is_member: bool = True,
        is_private: bool = False,
    ) -> None:
        """Make a channel exist; `is_member=False` makes posting to it fail `not_in_channel`."""
        with self._cond:
            self._channels[channel_id] = _Channel(
                channel_id, name or channel_id.lower(), is_member=is_member, is_private=is_private
            )

    def add_user(
        self,
        user_id: str,
        name: str | None = None,
        *,
        real_name: str | None = None,
        tz: str | None = None,
        is_admin: bool = False,
        is_bot: bool = False,
    ) -> None:
        """Make a user exist, with the time zone `users.info` reports."""
        with self._cond:
            username = name or user_id.lower()
            self._users[user_id] = _User(
                user_id,
                username,
                real_name or username.replace(".", " ").title(),
                tz or self.default_tz,
                is_admin=is_admin,
                is_bot=is_bot,
            )

    def add_message(
        self,
        channel: str,
        text: str,
        *,
        user: str,
        ts: str | None = None,
        thread_ts: str | None = None,
        blocks: list[JsonDict] | None = None,
    ) -> str:
        """Put a message by a person into a channel (as if typed in Slack); returns its ts."""
        with self._cond:
            channel_id = self._channel(channel).id
            ts = ts or self.next_ts()
            message: JsonDict = {
                "user": user,
                "type": "message",
                "ts": ts,
                "client_msg_id": secrets.token_hex(16),
                "text": text,
                "team": self.team_id,
            }
            if blocks is not None:
                message["blocks"] = copy.deepcopy(blocks)
            if thread_ts:
                message["thread_ts"] = thread_ts
            self._store_message(channel_id, message)
            return ts

    def edit_message(self, channel: str, ts: str, text: str) -> JsonDict:
        """Change a stored message's text as its author would; returns the previous state."""
        with self._cond:
            message = self._find_message(self._channel(channel).id, ts)
            previous = copy.deepcopy(message)
            message["text"] = text
            message["edited"] = {"user": message.get("user"), "ts": self.next_ts()}
            return previous

    def register_trigger(self, trigger_id: str) -> None:
        """Note when a trigger_id was handed to the bot; `views.open` enforces its 3 s life."""
        with self._cond:
            self._triggers_issued[trigger_id] = time.monotonic()

    def next_ts(self) -> str:
        """A message timestamp: unique, increasing, close to now (`"1700000000.000100"`)."""
        with self._cond:
            now_us = time.time_ns() // 1000
            self._last_ts_us = max(now_us, self._last_ts_us + 1)
            return f"{self._last_ts_us // 1_000_000}.{self._last_ts_us % 1_000_000:06d}"

    # ------------------------------------------------------------------ faults

    def fail_next(self, method: str, error: str, times: int = 1) -> None:
        """Answer the next `times` calls of `method` with `{"ok": false, "error": error}`."""
        with self._cond:
            self._failures.setdefault(method, deque()).extend([error] * times)

    def rate_limit_next(self, method: str, retry_after: int = 1, times: int = 1) -> None:
        """Answer the next `times` calls of `method` with HTTP 429 and `Retry-After`."""
        with self._cond:
            self._rate_limits.setdefault(method, deque()).extend([retry_after] * times)

    def fail_calls(self, error: str, methods: Iterable[str] = (ALL_METHODS,)) -> None:
        """From now on until `heal()`, answer calls of `methods` (default: every Web API call
        and response_url post) with `{"ok": false, "error": error}`, Slack's real shape: an
        auth error (`AUTH_ERRORS`), a channel error (`CHANNEL_ERRORS`) or any other."""
        self._break(methods, _Outage(error=error))

    def fail_with_status(self, status: int = 503, methods: Iterable[str] = (ALL_METHODS,)) -> None:
        """From now on until `heal()`, answer calls of `methods` with HTTP `status` (a 5xx)
        and an HTML body, as Slack's edge does when Slack is down."""
        if not 500 <= status <= 599:
            raise ValueError(f"a server error is a 5xx, not {status}")
        self._break(methods, _Outage(status=status))

    def hold_calls(self, seconds: float, methods: Iterable[str] = (ALL_METHODS,)) -> None:
        """From now on until `heal()`, hold calls of `methods` for `seconds` (make it longer
        than the client's timeout, which then gives up), then answer 504 with nothing done."""
        if seconds <= 0:
            raise ValueError("hold calls for a positive number of seconds")
        self._break(methods, _Outage(hold_seconds=seconds))

    def heal(self, methods: Iterable[str] | None = None) -> None:
        """End the lasting faults of `methods` (default: all of them)."""
        with self._cond:
            if methods is None:
                self._outages.clear()
            for method in methods or ():
                self._outages.pop(method, None)

    def _break(self, methods: Iterable[str], outage: _Outage) -> None:
        names = [methods] if isinstance(methods, str) else list(methods)
        if not names:
            raise ValueError("name at least one method, or ALL_METHODS")
        with self._cond:
            for method in names:
                self._outages[method] = outage

    def _outage(self, method: str) -> _Outage | None:
        with self._cond:
            return self._outages.get(method) or self._outages.get(ALL_METHODS)

    def set_latency(self, method: str, seconds: float) -> None:
        """Delay answers to `method` (also `upload` and `response_url`); 0 removes it."""
        with self._cond:
            if seconds > 0:
                self._latency[method] = seconds
            else:
                self._latency.pop(method, None)

    # ------------------------------------------------------------------ inspection

    def calls(self, method: str | None = None) -> list[Call]:
        """The calls recorded so far (all, or of one method), oldest first."""
        with self._cond:
            return [c for c in self._calls if method is None or c.method == method]

    def clear(self) -> None:
        """Forget recorded calls and response_url posts (state and faults are kept)."""
        with self._cond:
            self._calls.clear()
            self._response_posts.clear()

    def reset(self) -> None:
        """Forget everything: calls, messages, views, files, faults, latencies."""
        with self._cond:
            self._reset_state()
            self._latency.clear()
            self._rate_limits.clear()
            self._failures.clear()
            self._outages.clear()

    def wait_for(
        self,
        method: str,
        predicate: Callable[[Call], bool] = lambda call: True,
        timeout: float = 10.0,
        count: int = 1,
    ) -> list[Call]:
        """Block until `count` calls of `method` match `predicate`; returns all that match.

        A predicate that raises (a missing key, say) counts as not matching. On timeout an
        AssertionError lists the calls recorded so far.
        """
        errors: list[BaseException] = []

        def matches(call: Call) -> bool:
            try:
                return bool(predicate(call))
            except Exception as exc:  # a predicate probing a body that lacks a key
                errors.append(exc)
                return False

        with self._cond:
            found = self._wait(
                lambda: [c for c in self._calls if c.method == method and matches(c)],
                count,
                timeout,
            )
            if found is not None:
                return found
            lines = [c.summary() for c in self._calls[-50:]]
            matched = len([c for c in self._calls if c.method == method and matches(c)])
            raise AssertionError(
                _timeout_message(
                    f"{count} {method} call(s) matching the predicate ({matched} matched)",
                    timeout,
                    "calls",
                    len(self._calls),
                    lines,
                    errors,
                )
            )

    def messages(self, channel: str, thread_ts: str | None = None) -> list[JsonDict]:
        """Messages as they now stand, in post order; with `thread_ts`, that thread only.

        Replies carry `thread_ts`; a thread's parent carries `reply_count` and `latest_reply`.
        """
        with self._cond:
            channel_id = self._channel_id_or_name(channel)
            stored = self._messages.get(channel_id, [])
            if thread_ts is not None:
                stored = [
                    m for m in stored if m["ts"] == thread_ts or m.get("thread_ts") == thread_ts
                ]
            return copy.deepcopy(stored)

    def replies(self, channel: str, thread_ts: str) -> list[JsonDict]:
        """The replies in a thread, without its parent."""
        return [m for m in self.messages(channel, thread_ts) if m["ts"] != thread_ts]

    def message(self, channel: str, ts: str) -> JsonDict | None:
        with self._cond:
            for stored in self._messages.get(self._channel_id_or_name(channel), []):
                if stored["ts"] == ts:
                    return copy.deepcopy(stored)
            return None

    def ephemerals(self, channel: str | None = None, user: str | None = None) -> list[JsonDict]:
        """Ephemeral messages (chat.postEphemeral and ephemeral response_url posts)."""
        with self._cond:
            return copy.deepcopy(
                [
                    e
                    for e in self._ephemerals
                    if (channel is None or e.get("channel") == channel)
                    and (user is None or e.get("user") == user)
                ]
            )

    def uploaded_files(self) -> dict[str, JsonDict]:
        """Files whose bytes arrived: id -> {bytes, filename, title, channel, thread_ts, ...}."""
        with self._cond:
            return {
                u.file_id: {
                    "bytes": u.data,
                    "filename": u.filename,
                    "title": u.title,
                    "channel": u.channel,
                    "thread_ts": u.thread_ts,
                    "initial_comment": u.initial_comment,
                    "alt_txt": u.alt_txt,
                    "length": u.length,
                    "completed": u.completed,
                }
                for u in self._uploads.values()
                if u.data is not None
            }

    def views(self) -> dict[str, JsonDict]:
        """Views opened or published, by view id, as they now stand."""
        with self._cond:
            return copy.deepcopy(self._views)

    def view(self, view_id: str) -> JsonDict | None:
        with self._cond:
            found = self._views.get(view_id)
            return copy.deepcopy(found) if found is not None else None

    def latest_view(self, callback_id: str) -> JsonDict | None:
        """The most recently opened or updated view with this callback_id."""
        with self._cond:
            for view in reversed(list(self._views.values())):
                if view.get("callback_id") == callback_id:
                    return copy.deepcopy(view)
            return None

    def channel_name(self, channel_id: str) -> str:
        with self._cond:
            known = self._channels.get(channel_id)
            return known.name if known else channel_id.lower()

    def user_name(self, user_id: str) -> str:
        with self._cond:
            known = self._users.get(user_id)
            return known.name if known else user_id.lower()

    # ------------------------------------------------------------------ response_url

    def response_url(
        self,
        name: str | None = None,
        *,
        channel: str | None = None,
        message_ts: str | None = None,
        user: str | None = None,
    ) -> str:
        """A URL on the emulator that records what the bot POSTs to it.

        Args:
            name: the id used in the URL (default: a fresh unique one).
            channel, message_ts, user: where Slack would show the answers: with
                `message_ts`, `replace_original`/`delete_original` act on that stored
                message; `in_channel` answers are posted to `channel`; ephemeral ones are
                kept in `ephemerals()` for `user`.
        """
        with self._cond:
            response_id = name or f"R{next(self._ids):06d}{secrets.token_hex(4)}"
            self._response_targets[response_id] = _ResponseTarget(channel, message_ts, user)
            return f"{self.root_url}/response/{quote(response_id, safe='')}"

    def responses(self, id: str | None = None) -> list[ResponseUrlPost]:
        """Posts to response_urls (all, or to one id or full URL), oldest first."""
        wanted = _response_id(id) if id is not None else None
        with self._cond:
            return [p for p in self._response_posts if wanted is None or p.id == wanted]

    def wait_for_response(
        self,
        predicate: Callable[[ResponseUrlPost], bool] = lambda post: True,
        timeout: float = 10.0,
        *,
        id: str | None = None,
        count: int = 1,
    ) -> list[ResponseUrlPost]:
        """Block until `count` response_url posts match; returns all that match."""
        wanted = _response_id(id) if id is not None else None
        errors: list[BaseException] = []

        def matches(post: ResponseUrlPost) -> bool:
            if wanted is not None and post.id != wanted:
                return False
            try:
                return bool(predicate(post))
            except Exception as exc:  # a predicate probing a body that lacks a key
                errors.append(exc)
                return False

        with self._cond:
            found = self._wait(
                lambda: [p for p in self._response_posts if matches(p)], count, timeout
            )
            if found is not None:
                return found
            where = f" to {wanted}" if wanted else ""
            lines = [p.summary() for p in self._response_posts[-50:]]
            lines += ["(Web API calls:)"] + [c.summary() for c in self._calls[-20:]]
            raise AssertionError(
                _timeout_message(
                    f"{count} response_url post(s){where} matching the predicate",
                    timeout,
                    "response_url posts",
                    len(self._response_posts),
                    lines,
                    errors,
                )
            )

    # ------------------------------------------------------------------ HTTP routing

    def _wait(self, collect: Callable[[], list[_T]], count: int, timeout: float) -> list[_T] | None:
        deadline = time.monotonic() + timeout
        while True:
            found = collect()
            if len(found) >= count:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._cond.wait(remaining)

    def _route(self, verb: str, target: str, headers: dict[str, str], raw: bytes) -> _Reply:
        parts = urlsplit(target)
        path = parts.path
        if path.startswith("/api/"):
            return self._handle_api(path.removeprefix("/api/"), parts.query, headers, raw)
        if path.startswith("/upload/") and verb == "POST":
            return self._handle_upload(path.removeprefix("/upload/"), headers, raw)
        if path.startswith("/response/") and verb == "POST":
            return self._handle_response_url(unquote(path.removeprefix("/response/")), headers, raw)
        if path.startswith("/files-pri/") and verb == "GET":
            return self._handle_file_download(path.removeprefix("/files-pri/"), headers)
        return _Reply.text("Not Found", 404)

    def _delay(self, method: str) -> None:
        with self._cond:
            seconds = self._latency.get(method, 0.0)
        if seconds:
            time.sleep(seconds)

    def _handle_api(self, method: str, query: str, headers: dict[str, str], raw: bytes) -> _Reply:
        content_type = _header(headers, "Content-Type") or ""
        is_json = content_type.split(";")[0].strip().lower() == "application/json"
        try:
            params = _parse_api_params(content_type, query, raw)
            parse_error = None
        except ValueError:
            params, parse_error = {}, "invalid_json"
        self._delay(method)
        outage = self._outage(method)
        if outage is not None and (outage.status or outage.hold_seconds):
            return self._outage_reply(method, headers, params, outage)
        with self._cond:
            status, extra_headers, response = self._answer(
                method, headers, params, is_json=is_json, parse_error=parse_error
            )
            if is_json and response.get("ok") and "charset" not in content_type.lower():
                response["warning"] = "missing_charset"
                response["response_metadata"] = {"warnings": ["missing_charset"]}
            self._record(
                Call(method, headers, params, copy.deepcopy(response), status, time.time())
            )
        return _Reply.json(response, status, **extra_headers)

    def _answer(
        self,
        method: str,
        headers: dict[str, str],
        params: JsonDict,
        *,
        is_json: bool,
        parse_error: str | None,
    ) -> tuple[int, dict[str, str], JsonDict]:
        retry_after = _take(self._rate_limits, method)
        if retry_after is not None:
            return 429, {"Retry-After": str(retry_after)}, {"ok": False, "error": "ratelimited"}
        outage = self._outages.get(method) or self._outages.get(ALL_METHODS)
        if outage is not None and outage.error is not None:
            return 200, {}, {"ok": False, "error": outage.error}
        injected = _take(self._failures, method)
        if injected is not None:
            return 200, {}, {"ok": False, "error": injected}
        implementation = self._methods.get(method)
        if implementation is None:
            return 200, {}, {"ok": False, "error": "unknown_method", "req_method": method}
        if parse_error is not None:
            return 200, {}, {"ok": False, "error": parse_error}
        token = _token_from(headers, params, is_json=is_json)
        if token is None and method != "api.test":
            return 200, {}, {"ok": False, "error": "not_authed"}
        if token is not None and token not in self._tokens:
            return 200, {}, {"ok": False, "error": "invalid_auth"}
        try:
            return 200, {}, implementation(params)
        except _ApiError as err:
            return 200, {}, err.as_response()

    def _outage_reply(
        self, method: str, headers: dict[str, str], params: JsonDict, outage: _Outage
    ) -> _Reply:
        """A 5xx, or a request held past the client's patience: recorded, nothing changed."""
        if outage.hold_seconds:
            time.sleep(outage.hold_seconds)
            status = 504
        else:
            status = outage.status or 503
        body = f"<html><body><h1>{status}</h1>Slack is having trouble.</body></html>"
        with self._cond:
            response = {"ok": False, "error": f"http_{status}"}
            self._record(Call(method, headers, params, response, status, time.time()))
        return _Reply(status, {"Content-Type": "text/html; charset=utf-8"}, body.encode())

    def _record(self, call: Call) -> None:
        self._calls.append(call)
        self._cond.notify_all()

    # ------------------------------------------------------------------ lookups

    def _channel(self, value: Any) -> _Channel:
        if not isinstance(value, str) or not value:
            raise _ApiError("channel_not_found")
        name = value.removeprefix("#")
        if value in self._channels:
            return self._channels[value]
        for channel in self._channels.values():
            if channel.name == name:
                return channel
        if self._any_channel and _CHANNEL_ID.match(value):
            self._channels[value] = _Channel(value, value.lower())
            return self._channels[value]
        if _USER_ID.match(value) and (value in self._users or self._any_user):
            # Posting to a user id posts to the DM with that user.
            dm_id = "D" + value[1:]
            self._channels.setdefault(dm_id, _Channel(dm_id, dm_id.lower()))
            return self._channels[dm_id]
        raise _ApiError("channel_not_found")

    def _channel_id_or_name(self, value: str) -> str:
        try:
            return self._channel(value).id
        except _ApiError:
            return value

    def _user(self, value: Any) -> _User:
        if not isinstance(value, str) or not value:
            raise _missing("user")
        if value in self._users:
            return self._users[value]
        if self._any_user and _USER_ID.match(value):
            self.add_user(value)
            return self._users[value]
        raise _ApiError("user_not_found")

    def _find_message(self, channel_id: str, ts: Any) -> JsonDict:
        for message in self._messages.get(channel_id, []):
            if message["ts"] == ts:
                return message
        raise _ApiError("message_not_found")

    def _store_message(self, channel_id: str, message: JsonDict) -> None:
        stored = self._messages.setdefault(channel_id, [])
        thread_ts = message.get("thread_ts")
        if thread_ts and thread_ts != message["ts"]:
            for parent in stored:
                if parent["ts"] == thread_ts:
                    message.setdefault("parent_user_id", parent.get("user"))
                    parent["thread_ts"] = thread_ts
                    parent["reply_count"] = parent.get("reply_count", 0) + 1
                    users = parent.setdefault("reply_users", [])
                    if message.get("user") not in users:
                        users.append(message.get("user"))
                    parent["reply_users_count"] = len(users)
                    parent["latest_reply"] = message["ts"]
                    break
        stored.append(message)

    def _bot_message(self, ts: str, params: JsonDict, blocks: list[JsonDict] | None) -> JsonDict:
        message: JsonDict = {
            "user": self.bot_user_id,
            "type": "message",
            "ts": ts,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "text": params.get("text") or "",
            "team": self.team_id,
            "bot_profile": {
                "id": self.bot_id,
                "app_id": self.app_id,
                "name": self.bot_name,
                "deleted": False,
                "team_id": self.team_id,
            },
        }
        if blocks is not None:
            message["blocks"] = blocks
        for key in ("attachments", "metadata"):
            if params.get(key):
                message[key] = params[key]
        if params.get("thread_ts"):
            message["thread_ts"] = str(params["thread_ts"])
        return message

    def _check_blocks(self, value: Any, limit: int) -> list[JsonDict] | None:
        if value is None or value == "":
            return None
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise _ApiError("invalid_blocks_format") from None
        if not isinstance(value, list):
            raise _ApiError("invalid_blocks_format")
        if len(value) > limit:
            raise _ApiError(
                "invalid_blocks",
                f"[ERROR] no more than {limit} items allowed [json-pointer:/blocks]",
            )
        blocks = copy.deepcopy(value)
        for index, block in enumerate(blocks):
            pointer = f"/blocks/{index}"
            if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                raise _ApiError(
                    "invalid_blocks",
                    f"[ERROR] missing required field: type [json-pointer:{pointer}]",
                )
            limits = {"section": 3000, "header": 150}
            text = block.get("text")
            if block["type"] in limits and isinstance(text, dict):
                most = limits[block["type"]]
                if len(str(text.get("text", ""))) > most:
                    raise _ApiError(
                        "invalid_blocks",
                        f"[ERROR] must be less than {most + 1} characters "
                        f"[json-pointer:{pointer}/text/text]",
                    )
            # Slack gives every block without one a block_id.
            block.setdefault("block_id", f"b{next(self._ids):05d}")
        return blocks

    # ------------------------------------------------------------------ Web API methods

    def _apps_connections_open(self, params: JsonDict) -> JsonDict:
        """Socket Mode: the WebSocket URL set with `socket_mode_url` (an app-level token's call)."""
        if not self.socket_mode_url:
            raise _ApiError("not_allowed_token_type")
        return {"ok": True, "url": self.socket_mode_url}

    def _api_test(self, params: JsonDict) -> JsonDict:
        return {"ok": True, "args": {k: v for k, v in params.items() if k != "token"}}

    def _auth_test(self, params: JsonDict) -> JsonDict:
        return {
            "ok": True,
            "url": f"https://{self.team_domain}.slack.com/",
            "team": self.team_name,
            "user": self.bot_name,
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _chat_post_message(self, params: JsonDict) -> JsonDict:
        channel = self._channel(params.get("channel"))
        if not channel.is_member and not channel.is_im:
            raise _ApiError("not_in_channel")
        blocks = self._check_blocks(params.get("blocks"), _MESSAGE_BLOCK_LIMIT)
        text = params.get("text")
        if not text and not blocks and not params.get("attachments"):
            raise _ApiError("no_text")
        if text and len(str(text)) > _TEXT_LIMIT:
            raise _ApiError("msg_too_long")
        message = self._bot_message(self.next_ts(), params, blocks)
        self._store_message(channel.id, message)
        return {
            "ok": True,
            "channel": channel.id,
            "ts": message["ts"],
            "message": copy.deepcopy(message),
        }

    def _chat_update(self, params: JsonDict) -> JsonDict:
        channel = self._channel(params.get("channel"))
        if not params.get("ts"):
            raise _missing("ts")
        message = self._find_message(channel.id, params["ts"])
        if message.get("user") != self.bot_user_id:
            raise _ApiError("cant_update_message")
        blocks = self._check_blocks(params.get("blocks"), _MESSAGE_BLOCK_LIMIT)
        text = params.get("text")
        if not text and not blocks and not params.get("attachments"):
            raise _ApiError("no_text")
        if text is not None:
            message["text"] = text
        # Like Slack: blocks/attachments left out are kept; an empty list removes them.
        if "blocks" in params:
            if blocks:
                message["blocks"] = blocks
            else:
                message.pop("blocks", None)
        if "attachments" in params:
            if params["attachments"]:
                message["attachments"] = params["attachments"]
            else:
                message.pop("attachments", None)
        if params.get("metadata"):
            message["metadata"] = params["metadata"]
        message["edited"] = {"user": self.bot_user_id, "ts": self.next_ts()}
        return {
            "ok": True,
            "channel": channel.id,
            "ts": message["ts"],
            "text": message["text"],
            "message": copy.deepcopy(message),
        }

    def _chat_post_ephemeral(self, params: JsonDict) -> JsonDict:
        channel = self._channel(params.get("channel"))
        if not params.get("user"):
            raise _missing("user")
        user = self._user(params["user"])
        blocks = self._check_blocks(params.get("blocks"), _MESSAGE_BLOCK_LIMIT)
        if not params.get("text") and not blocks and not params.get("attachments"):
            raise _ApiError("no_text")
        message_ts = self.next_ts()
        self._ephemerals.append(
            {
                "source": "chat.postEphemeral",
                "channel": channel.id,
                "user": user.id,
                "text": params.get("text") or "",
                "blocks": blocks,
                "attachments": params.get("attachments"),
                "thread_ts": params.get("thread_ts"),
                "message_ts": message_ts,
            }
        )
        return {"ok": True, "message_ts": message_ts}

    def _chat_delete(self, params: JsonDict) -> JsonDict:
        channel = self._channel(params.get("channel"))
        message = self._find_message(channel.id, params.get("ts"))
        if message.get("user") != self.bot_user_id:
            raise _ApiError("cant_delete_message")
        self._messages[channel.id].remove(message)
        return {"ok": True, "channel": channel.id, "ts": message["ts"]}

    def _chat_get_permalink(self, params: JsonDict) -> JsonDict:
        channel = self._channel(params.get("channel"))
        message = self._find_message(channel.id, params.get("message_ts"))
        ts = str(message["ts"])
        archive = f"https://{self.team_domain}.slack.com/archives/{channel.id}"
        permalink = f"{archive}/p{ts.replace('.', '')}"
        thread_ts = message.get("thread_ts")
        if thread_ts and thread_ts != ts:
            permalink += f"?thread_ts={thread_ts}&cid={channel.id}"
        return {"ok": True, "channel": channel.id, "permalink": permalink}

    def _reactions_add(self, params: JsonDict) -> JsonDict:
        channel = self._channel(params.get("channel"))
        name = str(params.get("name") or "").strip(":")
        if not name:
            raise _ApiError("invalid_name")
        message = self._find_message(channel.id, params.get("timestamp"))
        reactions: list[JsonDict] = message.setdefault("reactions", [])
        for reaction in reactions:
            if reaction["name"] == name:
                if self.bot_user_id in reaction["users"]:
                    raise _ApiError("already_reacted")
                reaction["users"].append(self.bot_user_id)
                reaction["count"] += 1
                break
        else:
            reactions.append({"name": name, "users": [self.bot_user_id], "count": 1})
        return {"ok": True}

    def _channel_object(self, channel: _Channel) -> JsonDict:
        now = int(time.time())
        return {
            "id": channel.id,
            "name": channel.name,
            "is_channel": not channel.is_im and not channel.is_private,
            "is_group": channel.is_private,
            "is_im": channel.is_im,
            "is_mpim": False,
            "is_private": channel.is_private or channel.is_im,
            "created": channel.created,
            "is_archived": False,
            "is_general": False,
            "unlinked": 0,
            "name_normalized": channel.name,
            "is_shared": False,
            "is_org_shared": False,
            "is_pending_ext_shared": False,
            "pending_shared": [],
            "context_team_id": self.team_id,
            "updated": now * 1000,
            "parent_conversation": None,
            "creator": self.bot_user_id,
            "is_ext_shared": False,
            "shared_team_ids": [self.team_id],
            "pending_connected_team_ids": [],
            "is_member": channel.is_member,
            "topic": {"value": "", "creator": "", "last_set": 0},
            "purpose": {"value": "", "creator": "", "last_set": 0},
            "previous_names": [],
        }

    def _conversations_info(self, params: JsonDict) -> JsonDict:
        return {"ok": True, "channel": self._channel_object(self._channel(params.get("channel")))}

    def _conversations_history(self, params: JsonDict) -> JsonDict:
        channel = self._channel(params.get("channel"))
        if not channel.is_member:
            raise _ApiError("not_in_channel")
        top_level = [
            m
            for m in self._messages.get(channel.id, [])
            if not m.get("thread_ts") or m.get("thread_ts") == m["ts"]
        ]
        limit = int(params.get("limit") or 100)
        newest_first = list(reversed(top_level))[:limit]
        return {
            "ok": True,
            "messages": copy.deepcopy(newest_first),
            "has_more": len(top_level) > limit,
            "pin_count": 0,
            "channel_actions_ts": None,
            "channel_actions_count": 0,
            "response_metadata": {"next_cursor": ""},
        }

    def _conversations_replies(self, params: JsonDict) -> JsonDict:
        channel = self._channel(params.get("channel"))
        ts = params.get("ts")
        if not ts:
            raise _missing("ts")
        stored = self._messages.get(channel.id, [])
        thread = [m for m in stored if m["ts"] == ts or m.get("thread_ts") == ts]
        if not thread:
            raise _ApiError("thread_not_found")
        return {
            "ok": True,
            "messages": copy.deepcopy(thread),
            "has_more": False,
            "response_metadata": {"next_cursor": ""},
        }

    def _users_info(self, params: JsonDict) -> JsonDict:
        user = self._user(params.get("user"))
        zone = ZoneInfo(user.tz)
        now = datetime.now(zone)
        offset = now.utcoffset()
        return {
            "ok": True,
            "user": {
                "id": user.id,
                "team_id": self.team_id,
                "name": user.name,
                "deleted": False,
                "color": "9f69e7",
                "real_name": user.real_name,
                "tz": user.tz,
                "tz_label": now.tzname() or user.tz,
                "tz_offset": int(offset.total_seconds()) if offset is not None else 0,
                "profile": {
                    "real_name": user.real_name,
                    "display_name": user.name,
                    "real_name_normalized": user.real_name,
                    "display_name_normalized": user.name,
                    "team": self.team_id,
                    "image_48": f"https://avatars.example/{user.id}_48.png",
                },
                "is_admin": user.is_admin,
                "is_owner": False,
                "is_primary_owner": False,
                "is_restricted": False,
                "is_ultra_restricted": False,
                "is_bot": user.is_bot,
                "is_app_user": False,
                "updated": int(time.time()),
            },
        }

    def _new_view(self, view: JsonDict, view_id: str | None = None) -> JsonDict:
        view_id = view_id or f"V{next(self._ids):010d}"
        stored: JsonDict = {
            "id": view_id,
            "team_id": self.team_id,
            "type": view.get("type"),
            "blocks": view.get("blocks", []),
            "private_metadata": view.get("private_metadata", ""),
            "callback_id": view.get("callback_id", ""),
            "state": {"values": {}},
            "hash": f"{int(time.time())}.{secrets.token_hex(4)}",
            "title": view.get("title"),
            "clear_on_close": bool(view.get("clear_on_close", False)),
            "notify_on_close": bool(view.get("notify_on_close", False)),
            "close": view.get("close"),
            "submit": view.get("submit"),
            "previous_view_id": None,
            "root_view_id": view_id,
            "app_id": self.app_id,
            "external_id": view.get("external_id", ""),
            "app_installed_team_id": self.team_id,
            "bot_id": self.bot_id,
        }
        self._views[view_id] = stored
        return stored

    def _check_view(self, value: Any, kinds: tuple[str, ...]) -> JsonDict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise _ApiError(
                    "invalid_arguments", "[ERROR] invalid json [json-pointer:/view]"
                ) from None
        if not isinstance(value, dict):
            raise _missing("view")
        if value.get("type") not in kinds:
            raise _ApiError(
                "invalid_arguments",
                f"[ERROR] must be one of: {', '.join(kinds)} [json-pointer:/view/type]",
            )
        if value["type"] == "modal" and not value.get("title"):
            raise _missing("title", " [json-pointer:/view]")
        view = dict(value)
        view["blocks"] = self._check_blocks(view.get("blocks") or [], _VIEW_BLOCK_LIMIT) or []
        return view

    def _views_open(self, params: JsonDict) -> JsonDict:
        trigger_id = params.get("trigger_id") or params.get("interactivity_pointer")
        if not trigger_id:
            raise _missing("trigger_id")
        if trigger_id in self._triggers_used:
            raise _ApiError("exchanged_trigger_id")
        issued = self._triggers_issued.get(trigger_id)
        if issued is not None and time.monotonic() - issued > TRIGGER_LIFETIME_SECONDS:
            raise _ApiError("expired_trigger_id")
        view = self._check_view(params.get("view"), ("modal",))
        self._triggers_used.add(trigger_id)
        return {"ok": True, "view": copy.deepcopy(self._new_view(view))}

    def _views_update(self, params: JsonDict) -> JsonDict:
        view_id = params.get("view_id")
        external_id = params.get("external_id")
        if not view_id and not external_id:
            raise _missing("view_id")
        current = self._views.get(view_id) if view_id else None
        if current is None and external_id:
            current = next(
                (v for v in self._views.values() if v.get("external_id") == external_id), None
            )
        if current is None:
            raise _ApiError("not_found")
        if params.get("hash") and params["hash"] != current["hash"]:
            raise _ApiError("hash_conflict")
        view = self._check_view(params.get("view"), ("modal", "home"))
        updated = self._new_view(view, view_id=current["id"])
        updated["root_view_id"] = current["root_view_id"]
        updated["previous_view_id"] = current["previous_view_id"]
        return {"ok": True, "view": copy.deepcopy(updated)}

    def _views_publish(self, params: JsonDict) -> JsonDict:
        user = self._user(params.get("user_id"))
        view = self._check_view(params.get("view"), ("home",))
        current_id = self._home_views.get(user.id)
        if current_id and params.get("hash") and params["hash"] != self._views[current_id]["hash"]:
            raise _ApiError("hash_conflict")
        published = self._new_view(view, view_id=current_id)
        self._home_views[user.id] = published["id"]
        return {"ok": True, "view": copy.deepcopy(published)}

    def _files_get_upload_url_external(self, params: JsonDict) -> JsonDict:
        filename = params.get("filename")
        if not filename:
            raise _missing("filename")
        try:
            length = int(params.get("length") or "")
        except ValueError:
            raise _missing("length") from None
        if length <= 0:
            raise _ApiError("invalid_arguments", "[ERROR] length must be greater than 0")
        file_id = f"F{next(self._ids):010d}"
        self._uploads[file_id] = _Upload(file_id, str(filename), length, params.get("alt_txt"))
        return {"ok": True, "upload_url": f"{self.root_url}/upload/{file_id}", "file_id": file_id}

    def _files_complete_upload_external(self, params: JsonDict) -> JsonDict:
        files = params.get("files")
        if isinstance(files, str):
            try:
                files = json.loads(files)
            except ValueError:
                raise _ApiError("invalid_arguments", "[ERROR] invalid json for files") from None
        if not isinstance(files, list) or not files:
            raise _missing("files")
        uploads: list[tuple[_Upload, JsonDict]] = []
        for entry in files:
            upload = self._uploads.get(str(entry.get("id"))) if isinstance(entry, dict) else None
            if upload is None or upload.data is None or upload.completed:
                raise _ApiError("file_not_found")
            uploads.append((upload, entry))
        channel_ids = [params["channel_id"]] if params.get("channel_id") else []
        if params.get("channels"):
            channel_ids += [c for c in str(params["channels"]).split(",") if c]
        channels = [self._channel(c) for c in channel_ids]
        thread_ts = params.get("thread_ts") or None
        comment = params.get("initial_comment") or None
        now = int(time.time())
        file_objects = []
        for upload, entry in uploads:
            upload.title = entry.get("title") or upload.filename
            upload.channel = channels[0].id if channels else None
            upload.thread_ts = thread_ts
            upload.initial_comment = comment
            upload.completed = True
            upload.file = self._file_object(upload, now)
            file_objects.append(upload.file)
        for channel in channels:
            message = self._bot_message(
                self.next_ts(), {"text": comment, "thread_ts": thread_ts}, None
            )
            message.update(
                {"files": copy.deepcopy(file_objects), "upload": True, "display_as_bot": False}
            )
            self._store_message(channel.id, message)
            share: JsonDict = {
                "reply_users": [],
                "reply_users_count": 0,
                "reply_count": 0,
                "ts": message["ts"],
                "channel_name": channel.name,
                "team_id": self.team_id,
                "share_user_id": self.bot_user_id,
                "source": "UNKNOWN",
            }
            if thread_ts:
                share["thread_ts"] = thread_ts
            visibility = "private" if channel.is_private or channel.is_im else "public"
            for file_object in file_objects:
                file_object["shares"].setdefault(visibility, {})[channel.id] = [share]
                file_object["channels"].append(channel.id)
        return {"ok": True, "files": copy.deepcopy(file_objects)}

    def _file_object(self, upload: _Upload, now: int) -> JsonDict:
        name = upload.filename
        extension = name.rsplit(".", 1)[-1].lower() if "." in name else "binary"
        private = f"{self.root_url}/files-pri/{upload.file_id}/{quote(name)}"
        file_object: JsonDict = {
            "id": upload.file_id,
            "created": now,
            "timestamp": now,
            "name": name,
            "title": upload.title,
            "mimetype": mimetypes.guess_type(name)[0] or "application/octet-stream",
            "filetype": extension,
            "pretty_type": extension.upper(),
            "user": self.bot_user_id,
            "user_team": self.team_id,
            "editable": False,
            "size": len(upload.data or b""),
            "mode": "hosted",
            "is_external": False,
            "external_type": "",
            "is_public": bool(upload.channel),
            "public_url_shared": False,
            "display_as_bot": False,
            "username": "",
            "url_private": private,
            "url_private_download": f"{private}?download=1",
            "permalink": f"https://{self.team_domain}.slack.com/files/{self.bot_user_id}/"
            f"{upload.file_id}/{quote(name)}",
            "permalink_public": f"https://slack-files.com/{self.team_id}-{upload.file_id}",
            "comments_count": 0,
            "is_starred": False,
            "shares": {},
            "channels": [],
            "groups": [],
            "ims": [],
            "has_more_shares": False,
            "has_rich_preview": False,
            "file_access": "visible",
        }
        if upload.alt_txt:
            file_object["alt_txt"] = upload.alt_txt
        return file_object

    # ------------------------------------------------------------------ other endpoints

    def _handle_upload(self, file_id: str, headers: dict[str, str], raw: bytes) -> _Reply:
        self._delay("upload")
        content_type = _header(headers, "Content-Type") or ""
        data = raw
        if content_type.lower().startswith("multipart/form-data"):
            fields = _parse_multipart(content_type, raw)
            uploaded = [v for v in fields.values() if isinstance(v, _FilePart)]
            if uploaded:
                data = uploaded[0].data
        with self._cond:
            upload = self._uploads.get(file_id)
            if upload is None:
                status, text = 404, "Not Found"
            else:
                upload.data = data
                status, text = 200, f"OK - {len(data)}"
            body = {"file_id": file_id, "size": len(data)}
            self._record(
                Call(
                    "upload",
                    headers,
                    body,
                    {"ok": status == 200, "text": text},
                    status,
                    time.time(),
                )
            )
        return _Reply.text(text, status)

    def _handle_file_download(self, rest: str, headers: dict[str, str]) -> _Reply:
        token = _token_from(headers, {}, is_json=False)
        with self._cond:
            upload = self._uploads.get(rest.split("/", 1)[0])
            if token not in self._tokens or upload is None or upload.data is None:
                return _Reply.text("Not Found", 404)
            content_type = mimetypes.guess_type(upload.filename)[0] or "application/octet-stream"
            return _Reply(200, {"Content-Type": content_type}, upload.data)

    def _handle_response_url(self, response_id: str, headers: dict[str, str], raw: bytes) -> _Reply:
        self._delay("response_url")
        # A response_url carries no token, so only a 5xx or a hold reaches it, not an error.
        outage = self._outage("response_url")
        if outage is not None and (outage.status or outage.hold_seconds):
            if outage.hold_seconds:
                time.sleep(outage.hold_seconds)
            status = 504 if outage.hold_seconds else (outage.status or 503)
            with self._cond:
                url = f"{self.root_url}/response/{quote(response_id, safe='')}"
                body = {"_raw": raw.decode("utf-8", "replace"), "_outage": status}
                self._response_posts.append(
                    ResponseUrlPost(response_id, url, headers, body, status, time.time())
                )
                self._cond.notify_all()
            return _Reply.text("Slack is having trouble.", status)
        try:
            body = json.loads(raw.decode("utf-8") or "{}")
            if not isinstance(body, dict):
                raise ValueError(body)
        except ValueError:
            body = None
        with self._cond:
            target = self._response_targets.setdefault(response_id, _ResponseTarget())
            if body is None:
                status, text, body = (
                    400,
                    "invalid_payload",
                    {"_raw": raw.decode("utf-8", "replace")},
                )
            else:
                status, text = self._apply_response(target, body)
            url = f"{self.root_url}/response/{quote(response_id, safe='')}"
            self._response_posts.append(
                ResponseUrlPost(response_id, url, headers, body, status, time.time())
            )
            self._cond.notify_all()
        return _Reply.text(text, status)

    def _apply_response(self, target: _ResponseTarget, body: JsonDict) -> tuple[int, str]:
        """Show a response_url post where Slack would: the original message, channel or user."""
        target.uses += 1
        original = None
        if target.channel and target.message_ts:
            try:
                original = self._find_message(self._channel(target.channel).id, target.message_ts)
            except _ApiError:
                original = None
        if body.get("delete_original"):
            if original is not None and target.channel:
                self._messages[self._channel(target.channel).id].remove(original)
            elif target.ephemeral_index is not None:
                self._ephemerals[target.ephemeral_index]["deleted"] = True
            return 200, "ok"
        blocks = body.get("blocks") or None
        if not body.get("text") and not blocks and not body.get("attachments"):
            return 400, "no_text"
        if body.get("replace_original") and original is not None:
            original["text"] = body.get("text") or ""
            for key in ("blocks", "attachments"):
                if body.get(key):
                    original[key] = copy.deepcopy(body[key])
                else:
                    original.pop(key, None)
            original["edited"] = {"user": self.bot_user_id, "ts": self.next_ts()}
            return 200, "ok"
        if body.get("response_type") == "in_channel" and target.channel:
            try:
                channel = self._channel(target.channel)
            except _ApiError:
                return 404, "channel_not_found"
            message = self._bot_message(self.next_ts(), body, copy.deepcopy(blocks))
            self._store_message(channel.id, message)
            return 200, "ok"
        ephemeral = {
            "source": "response_url",
            "channel": target.channel,
            "user": target.user,
            "text": body.get("text") or "",
            "blocks": copy.deepcopy(blocks),
            "attachments": body.get("attachments"),
            "thread_ts": body.get("thread_ts"),
            "message_ts": self.next_ts(),
        }
        if body.get("replace_original") and target.ephemeral_index is not None:
            self._ephemerals[target.ephemeral_index] = ephemeral
        else:
            target.ephemeral_index = len(self._ephemerals)
            self._ephemerals.append(ephemeral)
        return 200, "ok"


# ---------------------------------------------------------------------- HTTP server


class _EmulatorServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, emulator: SlackEmulator, port: int) -> None:
        super().__init__(("127.0.0.1", port), _RequestHandler)
        self.emulator = emulator


class _RequestHandler(BaseHTTPRequestHandler):
    server: _EmulatorServer
    server_version = "SlackEmulator/1.0"

    def do_POST(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        headers = dict(self.headers.items())
        try:
            reply = self.server.emulator._route(self.command, self.path, headers, raw)
        except Exception as exc:  # a bug in the emulator: say so instead of dropping the line
            reply = _Reply.json({"ok": False, "error": "emulator_error", "detail": repr(exc)}, 500)
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a held call outlasted its timeout): nobody reads this

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the call log is the record."""


# ---------------------------------------------------------------------- parsing helpers


@dataclass(frozen=True)
class _FilePart:
    filename: str
    content_type: str
    data: bytes


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def _token_from(
    headers: Mapping[str, str], params: Mapping[str, Any], *, is_json: bool
) -> str | None:
    authorization = _header(headers, "Authorization") or ""
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    # Slack ignores a token inside a JSON body: JSON calls must use the Authorization header.
    token = params.get("token")
    if not is_json and isinstance(token, str) and token:
        return token
    return None


def _parse_api_params(content_type: str, query: str, raw: bytes) -> JsonDict:
    params: JsonDict = dict(parse_qsl(query, keep_blank_values=True))
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/json":
        decoded = json.loads(raw.decode("utf-8") or "{}")
        if not isinstance(decoded, dict):
            raise ValueError("a JSON body must be an object")
        params.update({k: v for k, v in decoded.items() if v is not None})
        return params
    if kind == "multipart/form-data":
        params.update(_parse_multipart(content_type, raw))
    elif raw:
        params.update(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
    for key in _JSON_STRING_FIELDS & params.keys():
        value = params[key]
        if isinstance(value, str) and value[:1] in ("[", "{"):
            # Left as sent when it is not JSON; the method reports it as Slack would.
            with contextlib.suppress(ValueError):
                params[key] = json.loads(value)
    return params


def _parse_multipart(content_type: str, raw: bytes) -> dict[str, Any]:
    header = Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str):
        return {}
    fields: dict[str, Any] = {}
    for chunk in raw.split(b"--" + boundary.encode("latin-1"))[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        part = Message()
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                part[name.strip()] = value.strip()
        name_param = part.get_param("name", header="content-disposition")
        filename_param = part.get_param("filename", header="content-disposition")
        if name_param is None:
            continue
        field_name = collapse_rfc2231_value(name_param)
        data = data.removesuffix(b"\r\n")
        if filename_param is not None:
            fields[field_name] = _FilePart(
                collapse_rfc2231_value(filename_param),
                part.get("Content-Type", "application/octet-stream"),
                data,
            )
        else:
            fields[field_name] = data.decode("utf-8", "replace")
    return fields


def _take(queue: dict[str, deque[_T]], method: str) -> _T | None:
    pending = queue.get(method)
    if not pending:
        return None
    return pending.popleft()


def _id_names(values: Iterable[str] | Mapping[str, str] | None) -> list[tuple[str, str | None]]:
    if values is None:
        return []
    if isinstance(values, Mapping):
        return [(key, name) for key, name in values.items()]
    return [(value, None) for value in values]


def _response_id(id_or_url: str) -> str:
    if "/response/" in id_or_url:
        return unquote(id_or_url.rsplit("/response/", 1)[1])
    return id_or_url


def _timeout_message(
    wanted: str,
    timeout: float,
    kind: str,
    total: int,
    lines: list[str],
    errors: list[BaseException],
) -> str:
    message = [f"timed out after {timeout:g}s waiting for {wanted}; {kind} so far: {total}"]
    message += [f"  {line}" for line in lines] or ["  (none)"]
    if errors:
        message.append(f"the predicate raised (treated as no match): {errors[-1]!r}")
    return "\n".join(message)


def main() -> None:
    """Run the emulator alone (`python -m tests.support.slack_emulator [port]`) for a demo."""
    import sys

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    with SlackEmulator(port=port) as emulator:
        print(
            f"Slack emulator: SLACK_API_URL={emulator.base_url} (token {DEFAULT_TOKEN})", flush=True
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
