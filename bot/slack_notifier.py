"""The Notifier, spoken through Slack's Web API (slack_sdk)."""

from __future__ import annotations

import logging

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
)
from slack_sdk.webhook import WebhookClient

from bot import messages
from bot.incidents import Incident
from bot.models import Rollout

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


class SlackNotifier:
    def __init__(self, client: WebClient) -> None:
        self.client = client

    def rollout_changed(self, rollout: Rollout) -> str | None:
        blocks = messages.build_rollout_message(rollout)
        text = messages.rollout_text(rollout)
        if rollout.message_ts:
            try:
                self.client.chat_update(
                    channel=rollout.channel, ts=rollout.message_ts, text=text, blocks=blocks
                )
                return rollout.message_ts
            except SlackApiError as exc:
                if exc.response.get("error") != "message_not_found":
                    raise
                logger.warning("rollout %s message vanished; posting a new one", rollout.id)
        response = self.client.chat_postMessage(channel=rollout.channel, text=text, blocks=blocks)
        return str(response["ts"])

    def tell_requester(self, response_url: str | None, text: str) -> None:
        if not response_url:
            return
        webhook = WebhookClient(response_url, timeout=10)
        result = webhook.send(text=text, response_type="ephemeral", replace_original=False)
        if result.status_code != 200:
            logger.warning("response_url answered %s: %s", result.status_code, result.body)

    def post(self, channel: str, text: str, *, thread_ts: str | None = None) -> str | None:
        response = self.client.chat_postMessage(channel=channel, text=text, thread_ts=thread_ts)
        return str(response["ts"])

    def incident_opened(self, incident: Incident) -> None:
        raise NotImplementedError("breach alerts arrive with issue 3/4")

    def incident_changed(self, incident: Incident, note: str) -> None:
        if incident.thread_ts:
            self.post(incident.channel, note, thread_ts=incident.thread_ts)
