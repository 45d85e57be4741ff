"""The Notifier, spoken through Slack's Web API (slack_sdk), every message by the outbox.

Each message goes out through `SlackLink` (bot/slack/link.py): in order, never holding up a
rollout, kept while Slack fails. The methods return a message's ts when Slack took it within
the link's wait; one that goes through later is recorded through `on_posted`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
)
from slack_sdk.models.blocks import Block
from slack_sdk.webhook import WebhookClient

from bot.domain.config import Approvals
from bot.domain.incidents import AnalysisChange, Incident
from bot.domain.models import Rollout
from bot.domain.text import Text
from bot.ports import Posted, PostedKind
from bot.reports import charts
from bot.slack import approval_messages, incident_messages, messages, texts
from bot.slack.link import SlackLink, SlackUnreachable
from bot.slack.render import mrkdwn

logger = logging.getLogger(__name__)

# slack_sdk logs an error for every answer it cannot decode (a 5xx's HTML page), each try of
# each message; the outbox logs why Slack fails once per reason instead (bot/slack/link.py).
_OUTBOX_SDK_LOGGER = logging.getLogger("bot.slack.outbox_client")
_OUTBOX_SDK_LOGGER.setLevel(logging.CRITICAL)

KNOWN_TS_KEPT = 5_000
"""Timestamps of messages the outbox posted, kept so a later change updates, not reposts."""


def build_web_client(token: str | None, base_url: str, timeout: float = 10.0) -> WebClient:
    """A WebClient that waits out 429s (Retry-After) and retries dropped connections: for
    answers to a person (bolt's listeners, the Home tab), who is waiting anyway."""
    client = WebClient(token=token, base_url=base_url, timeout=round(timeout))
    client.retry_handlers.extend(
        [
            RateLimitErrorRetryHandler(max_retry_count=3),
            ConnectionErrorRetryHandler(max_retry_count=2),
        ]
    )
    return client


def build_outbox_client(token: str | None, base_url: str, timeout: float = 10.0) -> WebClient:
    """A WebClient for the outbox: a 429 comes back at once (the outbox pauses itself) and a
    dropped connection is retried once; what still fails waits in the outbox."""
    client = WebClient(
        token=token, base_url=base_url, timeout=round(timeout), logger=_OUTBOX_SDK_LOGGER
    )
    client.retry_handlers.append(ConnectionErrorRetryHandler(max_retry_count=1))
    return client


class SlackNotifier:
    def __init__(
        self,
        client: WebClient,
        link: SlackLink,
        on_posted: Callable[[Posted], None] | None = None,
    ) -> None:
        self.client = client
        self.link = link
        self.on_posted = on_posted
        # Only the outbox's worker reads and writes it: calls run there one at a time.
        self._known_ts: OrderedDict[str, str] = OrderedDict()

    # Plumbing ----------------------------------------------------------------------------

    def _late(self, kind: PostedKind, id: str) -> Callable[[str], None]:
        def record(ts: str) -> None:
            if self.on_posted is not None:
                self.on_posted(Posted(kind, id, ts))

        return record

    def _remember(self, key: str, ts: str) -> None:
        self._known_ts[key] = ts
        self._known_ts.move_to_end(key)
        while len(self._known_ts) > KNOWN_TS_KEPT:
            self._known_ts.popitem(last=False)

    def _post_or_update(
        self, key: str, channel: str, ts: str | None, text: str, blocks: Sequence[Block]
    ) -> str:
        """Update the message at `ts` in place, or post it (again, if someone deleted it)."""
        ts = ts or self._known_ts.get(key)
        if ts:
            try:
                self.client.chat_update(channel=channel, ts=ts, text=text, blocks=blocks)
                return ts
            except SlackApiError as exc:
                if exc.response.get("error") != "message_not_found":
                    raise
                logger.warning("message %s in %s vanished; posting a new one", ts, channel)
        response = self.client.chat_postMessage(channel=channel, text=text, blocks=blocks)
        posted = str(response["ts"])
        self._remember(key, posted)
        return posted

    def _message(
        self,
        kind: PostedKind,
        id: str,
        channel: str,
        ts: str | None,
        text: str,
        blocks: Sequence[Block],
        *,
        raise_refused: bool = False,
    ) -> str | None:
        key = f"{kind}:{id}"
        return self.link.send(
            f"the {kind} message of {id}",
            lambda: self._post_or_update(key, channel, ts, text, blocks),
            channel=channel,
            key=key,
            on_late=self._late(kind, id),
            raise_refused=raise_refused,
        )

    def post(self, channel: str, text: str, *, thread_ts: str | None = None) -> str | None:
        """A message in a channel or thread; returns its ts if Slack took it within the wait."""

        def call() -> str:
            response = self.client.chat_postMessage(channel=channel, text=text, thread_ts=thread_ts)
            return str(response["ts"])

        where = f"thread {thread_ts}" if thread_ts else "channel"
        return self.link.send(f"a message in {channel} ({where})", call, channel=channel)

    # The Notifier ------------------------------------------------------------------------

    def rollout_changed(self, rollout: Rollout) -> str | None:
        return self._message(
            "rollout",
            rollout.id,
            rollout.channel,
            rollout.message_ts,
            messages.rollout_text(rollout),
            messages.build_rollout_message(rollout),
        )

    def approval_changed(
        self, rollout: Rollout, policy: Approvals, expires_at: float
    ) -> str | None:
        return self._message(
            "approval",
            rollout.id,
            rollout.channel,
            rollout.approval_ts,
            approval_messages.approval_text(rollout, policy),
            approval_messages.build_approval_request(rollout, policy, expires_at),
            # A request nobody can see must not stand: the requester is told at once.
            raise_refused=True,
        )

    def tell_requester(self, response_url: str | None, text: Text) -> None:
        if not response_url:
            return
        body = mrkdwn(text)

        def call() -> None:
            webhook = WebhookClient(response_url, timeout=round(self.link.timeout_seconds))
            result = webhook.send(text=body, response_type="ephemeral", replace_original=False)
            if result.status_code >= 500:
                raise SlackUnreachable(f"a response_url answered HTTP {result.status_code}")
            if result.status_code != 200:
                logger.warning("response_url answered %s: %s", result.status_code, result.body)

        self.link.send("an answer to a requester", call)

    def tell_person(self, channel: str, user: str, text: Text) -> None:
        body = mrkdwn(text)
        self.link.send(
            f"a note to {user} in {channel}",
            lambda: self.client.chat_postEphemeral(channel=channel, user=user, text=body),
            channel=channel,
        )

    def pipelines_halted(
        self, channel: str, pipelines: Sequence[str], by: str, reason: str
    ) -> None:
        self.post(channel, texts.pipelines_halted(pipelines, by, reason))

    def pipeline_resumed(self, channel: str, pipeline: str, by: str, force_reason: str) -> None:
        self.post(channel, texts.pipeline_resumed(pipeline, by, force_reason))

    def canary_held(
        self, rollout: Rollout, waiting: Sequence[str], decides_at: float, policy: str
    ) -> str | None:
        return self._message(
            "canary",
            rollout.id,
            rollout.channel,
            rollout.canary_prompt_ts,
            messages.canary_held_text(rollout, waiting, policy),
            messages.build_canary_held(rollout, waiting, decides_at, policy),
        )

    def routes_restored(self, channel: str, pipeline: str, text: Text) -> None:
        self.post(channel, ":twisted_rightwards_arrows: " + mrkdwn(text))

    def engine_changed(self, channel: str, pipelines: Sequence[str], text: Text) -> None:
        self.post(channel, ":whale: " + mrkdwn(text))

    def incident_opened(self, incident: Incident) -> str | None:
        """Post the alert and open its thread with the five-whys template."""
        alert_text = incident_messages.alert_text(incident)
        alert_blocks = incident_messages.build_breach_alert(incident)
        template = incident_messages.thread_template(incident)
        alert_ts: str | None = None

        def call() -> str:
            nonlocal alert_ts
            if alert_ts is None:  # tried again after the template failed: the alert stands
                response = self.client.chat_postMessage(
                    channel=incident.channel, text=alert_text, blocks=alert_blocks
                )
                alert_ts = str(response["ts"])
            self.client.chat_postMessage(
                channel=incident.channel, text=template, thread_ts=alert_ts
            )
            return alert_ts

        def late(ts: str) -> None:
            self._late("alert", incident.id)(ts)
            # The watch posts the chart of an alert that went out at once; this one, here.
            self.incident_chart(incident.model_copy(update={"alert_ts": ts, "thread_ts": ts}))

        return self.link.send(
            f"the alert of incident {incident.id}", call, channel=incident.channel, on_late=late
        )

    def incident_chart(self, incident: Incident) -> None:
        """Render the chart and upload it into the alert's thread."""
        if not incident.thread_ts:
            return
        # The alert and its thread stand without the chart: a failed render is logged, and
        # the incident goes on.
        try:
            png = charts.incident_chart(incident)
        except Exception:
            logger.exception("could not draw the chart of incident %s", incident.id)
            return
        thread_ts = incident.thread_ts
        self.link.send(
            f"the chart of incident {incident.id}",
            lambda: self.client.files_upload_v2(
                channel=incident.channel,
                thread_ts=thread_ts,
                content=png,
                filename=incident_messages.chart_filename(incident),
                title=incident_messages.chart_title(incident),
                alt_txt=incident_messages.chart_title(incident),
            ),
            channel=incident.channel,
        )

    def rollback_confirmed(self, incident: Incident, by: str, rollout_id: str) -> None:
        self._incident_changed(incident, texts.rollback_confirmed(incident, by, rollout_id))

    def analysis_recorded(self, incident: Incident, change: AnalysisChange) -> None:
        self._incident_changed(incident, incident_messages.analysis_status(incident, change))

    def incident_resumed(self, incident: Incident) -> None:
        self._incident_changed(incident, incident_messages.resume_summary(incident))

    def _incident_changed(self, incident: Incident, note: str) -> None:
        """A note in the incident's thread, and the alert re-rendered to match."""
        if not incident.thread_ts:
            return
        self.post(incident.channel, note, thread_ts=incident.thread_ts)
        if incident.alert_ts:
            alert_ts = incident.alert_ts
            text = incident_messages.alert_text(incident)
            blocks = incident_messages.build_breach_alert(incident)
            self.link.send(
                f"the alert of incident {incident.id}",
                lambda: self.client.chat_update(
                    channel=incident.channel, ts=alert_ts, text=text, blocks=blocks
                ),
                channel=incident.channel,
                key=f"alert:{incident.id}",
            )
