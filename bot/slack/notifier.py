"""The Notifier, spoken through Slack's Web API (slack_sdk)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

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
from bot.ports import NotifierBusy
from bot.reports import charts
from bot.slack import approval_messages, incident_messages, messages, texts
from bot.slack.render import mrkdwn

logger = logging.getLogger(__name__)


def build_web_client(token: str | None, base_url: str) -> WebClient:
    """A WebClient that waits out 429s (Retry-After) and retries dropped connections."""
    client = WebClient(token=token, base_url=base_url, timeout=10)
    client.retry_handlers.extend(
        [
            RateLimitErrorRetryHandler(max_retry_count=3),
            ConnectionErrorRetryHandler(max_retry_count=2),
        ]
    )
    return client


def build_progress_client(token: str | None, base_url: str) -> WebClient:
    """A WebClient for rollout progress: it retries dropped connections but not 429s, which
    become NotifierBusy so the rollout goes on and the message catches up later."""
    client = WebClient(token=token, base_url=base_url, timeout=10)
    client.retry_handlers.append(ConnectionErrorRetryHandler(max_retry_count=2))
    return client


def _busy(exc: SlackApiError) -> NotifierBusy | None:
    if exc.response.status_code != 429:
        return None
    raw = exc.response.headers.get("Retry-After") or exc.response.headers.get("retry-after")
    try:
        return NotifierBusy(max(1.0, float(raw)))
    except (TypeError, ValueError):
        return NotifierBusy(1.0)


def _post_or_update(
    client: WebClient, channel: str, ts: str | None, text: str, blocks: Sequence[Block]
) -> str:
    """Update the message at `ts` in place, or post it (again, if someone deleted it)."""
    if ts:
        try:
            client.chat_update(channel=channel, ts=ts, text=text, blocks=blocks)
            return ts
        except SlackApiError as exc:
            if exc.response.get("error") != "message_not_found":
                raise
            logger.warning("message %s in %s vanished; posting a new one", ts, channel)
    response = client.chat_postMessage(channel=channel, text=text, blocks=blocks)
    return str(response["ts"])


class SlackNotifier:
    def __init__(self, client: WebClient, progress_client: WebClient | None = None) -> None:
        self.client = client
        self.progress_client = progress_client or client

    def rollout_changed(self, rollout: Rollout) -> str | None:
        try:
            return _post_or_update(
                self.progress_client,
                rollout.channel,
                rollout.message_ts,
                messages.rollout_text(rollout),
                messages.build_rollout_message(rollout),
            )
        except SlackApiError as exc:
            busy = _busy(exc)
            if busy is not None:
                raise busy from exc
            raise

    def approval_changed(
        self, rollout: Rollout, policy: Approvals, expires_at: float
    ) -> str | None:
        return _post_or_update(
            self.client,
            rollout.channel,
            rollout.approval_ts,
            approval_messages.approval_text(rollout, policy),
            approval_messages.build_approval_request(rollout, policy, expires_at),
        )

    def tell_requester(self, response_url: str | None, text: Text) -> None:
        if not response_url:
            return
        webhook = WebhookClient(response_url, timeout=10)
        result = webhook.send(text=mrkdwn(text), response_type="ephemeral", replace_original=False)
        if result.status_code != 200:
            logger.warning("response_url answered %s: %s", result.status_code, result.body)

    def tell_person(self, channel: str, user: str, text: Text) -> None:
        self.client.chat_postEphemeral(channel=channel, user=user, text=mrkdwn(text))

    def post(self, channel: str, text: str, *, thread_ts: str | None = None) -> str:
        """A message in a channel or thread; returns its ts."""
        response = self.client.chat_postMessage(channel=channel, text=text, thread_ts=thread_ts)
        return str(response["ts"])

    def pipelines_halted(
        self, channel: str, pipelines: Sequence[str], by: str, reason: str
    ) -> None:
        self.post(channel, texts.pipelines_halted(pipelines, by, reason))

    def pipeline_resumed(self, channel: str, pipeline: str, by: str, force_reason: str) -> None:
        self.post(channel, texts.pipeline_resumed(pipeline, by, force_reason))

    def canary_held(
        self, rollout: Rollout, waiting: Sequence[str], decides_at: float, policy: str
    ) -> str | None:
        return _post_or_update(
            self.client,
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
        response = self.client.chat_postMessage(
            channel=incident.channel,
            text=incident_messages.alert_text(incident),
            blocks=incident_messages.build_breach_alert(incident),
        )
        alert_ts = str(response["ts"])
        self.post(incident.channel, incident_messages.thread_template(incident), thread_ts=alert_ts)
        return alert_ts

    def incident_chart(self, incident: Incident) -> None:
        """Render the chart and upload it into the alert's thread."""
        if not incident.thread_ts:
            return
        # The alert and its thread stand without the chart: a failed render or upload is
        # logged, and the incident goes on.
        try:
            png = charts.incident_chart(incident)
            self.client.files_upload_v2(
                channel=incident.channel,
                thread_ts=incident.thread_ts,
                content=png,
                filename=incident_messages.chart_filename(incident),
                title=incident_messages.chart_title(incident),
                alt_txt=incident_messages.chart_title(incident),
            )
        except Exception:
            logger.exception("could not upload the chart of incident %s", incident.id)

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
            try:
                self.client.chat_update(
                    channel=incident.channel,
                    ts=incident.alert_ts,
                    text=incident_messages.alert_text(incident),
                    blocks=incident_messages.build_breach_alert(incident),
                )
            except SlackApiError:
                logger.exception("could not update the alert of incident %s", incident.id)
