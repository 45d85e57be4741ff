"""The bot's link to Slack: every message goes out through one ordered outbox.

Rollouts and rollbacks never wait for Slack. A message is handed to the outbox, sent by its
one worker thread in the order it was handed in, and whoever handed it in waits for it only
while Slack works, and then at most `wait_seconds`. When Slack fails (a revoked token, a 5xx,
no answer in time) the failure is logged once per reason, `/healthz` shows it with since when,
callers stop waiting at all, and the messages wait in order: the first is tried again every
`retry_seconds`; when it goes through the rest follow, oldest first. A message that waited
longer than `give_up_seconds` is given up with a log line. Several changes of one message (a
rollout's progress) queued meanwhile become one: the latest state, in the first one's place.

A channel Slack refuses (channel_not_found, not_in_channel, is_archived) is not retried: its
messages are dropped, with one log line per channel and reason saying what to do, until a
message to that channel goes through again.

The outbox lives in this replica's memory: what it says is rendered from Redis, which keeps
the state itself, so a replica that dies with messages queued loses those messages only.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar, cast
from urllib.error import URLError

from slack_sdk.errors import SlackApiError

from bot import metrics

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

MAX_QUEUED = 10_000
"""Messages kept while Slack fails; past this the oldest is given up (memory stays bounded)."""

AUTH_ERRORS = frozenset(
    {"invalid_auth", "account_inactive", "token_revoked", "token_expired", "not_authed"}
)
SERVER_ERRORS = frozenset(
    {"internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
CHANNEL_ADVICE = {
    "not_in_channel": "invite the bot to channel {channel} (type /invite @immune in it)",
    "channel_not_found": (
        "check `channel:` in pipelines.yml; a private channel must invite the bot first"
    ),
    "is_archived": "unarchive channel {channel}, or point `channel:` in pipelines.yml elsewhere",
}


class SlackState(StrEnum):
    ok = "ok"
    auth_failed = "auth_failed"
    unreachable = "unreachable"


class MessageRefused(Exception):
    """Slack refused this message for good (a channel it cannot post in, a bad request)."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


class SlackUnreachable(Exception):
    """Slack (or a response_url) answered with a server error: try again later."""


@dataclass(frozen=True)
class _Failure:
    state: SlackState | None  # None: not Slack's failure but this message's (dropped)
    reason: str
    retry_after: float = 0.0  # rate limited: not a failure, a pause
    channel_error: str = ""


def classify(exc: BaseException, timeout: float) -> _Failure:
    """What a failed call says about Slack: down (and why), rate limited, or this message."""
    if isinstance(exc, SlackApiError):
        status = exc.response.status_code
        error = str(exc.response.get("error") or "")
        if status == 429:
            raw = exc.response.headers.get("Retry-After") or exc.response.headers.get("retry-after")
            try:
                retry_after = max(1.0, float(raw))
            except (TypeError, ValueError):
                retry_after = 1.0
            return _Failure(None, "rate limited", retry_after=retry_after)
        if status >= 500 or error in SERVER_ERRORS:
            return _Failure(SlackState.unreachable, f"Slack answered HTTP {status}")
        if error in AUTH_ERRORS:
            return _Failure(SlackState.auth_failed, error)
        if error in CHANNEL_ADVICE:
            return _Failure(None, error, channel_error=error)
        return _Failure(None, error or f"HTTP {status}")
    if isinstance(exc, SlackUnreachable):
        return _Failure(SlackState.unreachable, str(exc))
    if isinstance(exc, TimeoutError):
        return _Failure(SlackState.unreachable, f"no answer within {timeout:g}s")
    if isinstance(exc, URLError):
        if isinstance(exc.reason, TimeoutError):
            return _Failure(SlackState.unreachable, f"no answer within {timeout:g}s")
        return _Failure(SlackState.unreachable, f"cannot connect: {exc.reason}")
    if isinstance(exc, ConnectionError | http.client.HTTPException | OSError):
        return _Failure(SlackState.unreachable, f"connection failed: {type(exc).__name__}")
    return _Failure(None, f"{type(exc).__name__}: {exc}")


@dataclass
class _Entry:
    what: str
    channel: str | None
    key: str | None
    call: Callable[[], object]
    on_late: Callable[[Any], None] | None
    queued_at: float
    done: threading.Event = field(default_factory=threading.Event)  # its caller may go on
    result: object = None
    late: bool = False  # nobody waits for it any more: its result goes to on_late
    refused: str = ""  # Slack's error, when it refused the message for good
    sending: bool = False


class SlackLink:
    """The ordered outbox in front of Slack, and Slack's state as the bot last met it.

    Args:
        timeout_seconds: the Web API client's timeout (named in the log line of a timeout).
        retry_seconds: how often the first waiting message is tried while Slack fails.
        give_up_seconds: how long a message may wait before it is given up.
        wait_seconds: how long a caller waits for its own message while Slack works.
    """

    def __init__(
        self,
        *,
        timeout_seconds: float,
        retry_seconds: float,
        give_up_seconds: float,
        wait_seconds: float = 2.0,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        self.retry_seconds = retry_seconds
        self.give_up_seconds = give_up_seconds
        self.wait_seconds = wait_seconds
        self._cond = threading.Condition()
        self._queue: deque[_Entry] = deque()
        self._state = SlackState.ok
        self._reason = ""
        self._since = time.time()
        self._reasons_told: set[tuple[SlackState, str]] = set()
        self._channels_told: set[tuple[str, str]] = set()
        self._next_try = 0.0  # monotonic: the first message is not tried before
        self._given_up = 0
        self._stopped = False
        self._worker = threading.Thread(target=self._deliver_forever, name="slack-outbox")
        self._worker.daemon = True
        self._worker.start()

    # Sending -----------------------------------------------------------------------------

    def send(
        self,
        what: str,
        call: Callable[[], _T],
        *,
        channel: str | None = None,
        key: str | None = None,
        on_late: Callable[[_T], None] | None = None,
        raise_refused: bool = False,
    ) -> _T | None:
        """Queue `call`; its result if it went through within the wait, else None.

        Args:
            what: names the message in log lines (`rollout r-1's message`).
            key: a queued message with the same key is replaced by this one, in its place.
            on_late: gets the result of a call that went through after its caller stopped
                waiting (a message's ts, to be recorded).
            raise_refused: raise MessageRefused when Slack refuses the message for good
                within the wait (a request that must not stand without its message).
        """
        with self._cond:
            entry = self._queued(key)
            if entry is not None:
                entry.what, entry.call, entry.on_late = what, call, on_late
            else:
                entry = _Entry(what, channel, key, call, on_late, time.monotonic())
                self._queue.append(entry)
                if len(self._queue) > MAX_QUEUED:
                    self._give_up([self._queue.popleft()], f"more than {MAX_QUEUED} waiting")
                metrics.SLACK_QUEUED.set(len(self._queue))
                self._cond.notify_all()
            waits = (
                self._state is SlackState.ok
                and time.monotonic() >= self._next_try
                and threading.current_thread() is not self._worker
            )
            if not waits:
                entry.late = True
                return None
        entry.done.wait(self.wait_seconds)
        with self._cond:
            if entry.done.is_set():
                if entry.refused and raise_refused:
                    raise MessageRefused(entry.refused)
                return cast(_T, entry.result)
            entry.late = True
            return None

    def _queued(self, key: str | None) -> _Entry | None:
        if key is None:
            return None
        for entry in self._queue:
            if entry.key == key and not entry.sending:
                return entry
        return None

    # Health ------------------------------------------------------------------------------

    @property
    def state(self) -> SlackState:
        with self._cond:
            return self._state

    def health(self) -> dict[str, object]:
        """For /healthz: Slack's state, since when, why, and what waits for it."""
        with self._cond:
            report: dict[str, object] = {
                "ok": self._state is SlackState.ok,
                "state": self._state.value,
                "since": _utc(self._since),
                "queued": len(self._queue),
                "given_up": self._given_up,
            }
            if self._reason:
                report["reason"] = self._reason
            return report

    def stop(self, wait: bool = False) -> None:
        """No message is tried after this; with `wait`, a call already in flight is waited
        for (at most a try's timeout and its retry interval, plus a second), so nothing of
        this link runs or logs once it returns while Slack still answers."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if not wait or threading.current_thread() is self._worker:
            return
        self._worker.join(self.timeout_seconds + self.retry_seconds + 1.0)
        if self._worker.is_alive():
            logger.warning("the Slack outbox was still sending at stop; it is left to finish")

    # The worker --------------------------------------------------------------------------

    def _deliver_forever(self) -> None:
        while True:
            with self._cond:
                entry = self._next()
                if entry is None:
                    return
                entry.sending = True
            try:
                result = entry.call()
            except Exception as exc:
                self._failed(entry, exc)
                continue
            self._sent(entry, result)

    def _next(self) -> _Entry | None:
        """The first message once it may be tried (None: stopped); under the lock."""
        while not self._stopped:
            self._give_up_old()
            if not self._queue:
                self._cond.wait()
                continue
            wait = self._next_try - time.monotonic()
            if wait > 0:
                self._cond.wait(wait)
                continue
            return self._queue[0]
        return None

    def _sent(self, entry: _Entry, result: object) -> None:
        with self._cond:
            self._finish(entry, result)
            if entry.channel is not None:
                self._channels_told = {
                    told for told in self._channels_told if told[0] != entry.channel
                }
            if self._state is not SlackState.ok:
                logger.warning(
                    "Slack works again (it was %s since %s: %s); %d queued message(s) follow "
                    "in order",
                    self._state.value,
                    _utc(self._since),
                    self._reason,
                    len(self._queue),
                )
                self._set_state(SlackState.ok, "")
                self._reasons_told.clear()
            late = entry.late
        if late and entry.on_late is not None and result is not None:
            try:
                entry.on_late(result)
            except Exception:
                logger.exception("could not record what Slack answered to %s", entry.what)

    def _failed(self, entry: _Entry, exc: Exception) -> None:
        failure = classify(exc, self.timeout_seconds)
        with self._cond:
            if failure.retry_after:
                entry.sending = False
                self._release(entry)
                self._next_try = time.monotonic() + failure.retry_after
                logger.warning(
                    "Slack rate-limits %s; the outbox waits %.0fs", entry.what, failure.retry_after
                )
                return
            if failure.state is not None:
                entry.sending = False
                self._release(entry)  # nobody waits on a failing Slack
                self._next_try = time.monotonic() + self.retry_seconds
                if self._state is not failure.state or self._reason != failure.reason:
                    self._set_state(failure.state, failure.reason)
                told = (failure.state, failure.reason)
                if told not in self._reasons_told:
                    self._reasons_told.add(told)
                    logger.error(
                        "Slack %s: %s; messages wait in order (tried again every %gs, given "
                        "up after %gs: SLACK_GIVE_UP_SECONDS); rollouts go on without them",
                        failure.state.value.replace("_", " "),
                        failure.reason,
                        self.retry_seconds,
                        self.give_up_seconds,
                    )
                return
            entry.refused = failure.reason
            self._finish(entry, None)
            if failure.channel_error and entry.channel is not None:
                refused = (entry.channel, failure.channel_error)
                if refused not in self._channels_told:
                    self._channels_told.add(refused)
                    advice = CHANNEL_ADVICE[failure.channel_error].format(channel=entry.channel)
                    logger.error(
                        "Slack refuses messages to channel %s (%s): %s; its messages are "
                        "dropped, not retried",
                        entry.channel,
                        failure.channel_error,
                        advice,
                    )
                return
        logger.error("Slack refused %s: %s", entry.what, failure.reason, exc_info=exc)

    def _release(self, entry: _Entry) -> None:
        """Let whoever waits for `entry` go on without it; it stays queued; under the lock."""
        entry.late = True
        entry.done.set()

    def _finish(self, entry: _Entry, result: object) -> None:
        """Take the message out of the outbox and release whoever waits; under the lock."""
        if self._queue and self._queue[0] is entry:
            self._queue.popleft()
        entry.result = result
        entry.done.set()
        metrics.SLACK_QUEUED.set(len(self._queue))

    def _set_state(self, state: SlackState, reason: str) -> None:
        if state is not self._state:
            self._since = time.time()
        self._state, self._reason = state, reason
        metrics.SLACK_UP.set(1 if state is SlackState.ok else 0)

    def _give_up_old(self) -> None:
        limit = time.monotonic() - self.give_up_seconds
        old = []
        while self._queue and self._queue[0].queued_at < limit and not self._queue[0].sending:
            old.append(self._queue.popleft())
        if old:
            self._give_up(old, f"waited more than {self.give_up_seconds:g}s")

    def _give_up(self, entries: list[_Entry], why: str) -> None:
        for entry in entries:
            entry.late = True
            entry.done.set()
        self._given_up += len(entries)
        metrics.SLACK_GIVEN_UP.inc(len(entries))
        metrics.SLACK_QUEUED.set(len(self._queue))
        shown = ", ".join(entry.what for entry in entries[:10])
        more = f" and {len(entries) - 10} more" if len(entries) > 10 else ""
        logger.error(
            "gave up on %d Slack message(s) that %s (SLACK_GIVE_UP_SECONDS; Slack %s: %s): %s%s",
            len(entries),
            why,
            self._state.value,
            self._reason or "ok",
            shown,
            more,
        )


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
