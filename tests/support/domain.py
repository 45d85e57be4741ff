"""A bot Context on a real Redis without Slack, Docker or HTTP: for domain-level tests."""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from bot.domain.clock import Clock, FrozenClock
from bot.domain.incidents import AnalysisChange, Incident
from bot.domain.models import Rollout
from bot.domain.text import Text
from bot.plugins import parse_pipelines
from bot.ports import SilentNotifier
from bot.services.context import Context, Limits
from bot.services.runner import RolloutRunner, RolloutSettings
from bot.slack import incident_messages, texts
from bot.slack.render import mrkdwn
from bot.store.keys import Keys
from bot.store.store import Store

CHANNEL = "C0DEPLOY"
START = 1_800_000_000.0  # a fixed "now" for frozen clocks


@dataclass
class RecordingNotifier(SilentNotifier):
    """Keeps what the domain would have told people, in the words Slack would show."""

    posts: list[tuple[str, str]] = field(default_factory=list)  # (channel, text)
    told: list[tuple[str | None, str]] = field(default_factory=list)  # (response_url, text)
    opened: list[Incident] = field(default_factory=list)
    charts: list[str] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (incident id, thread reply)

    def tell_requester(self, response_url: str | None, text: Text) -> None:
        self.told.append((response_url, mrkdwn(text)))

    def pipelines_halted(
        self, channel: str, pipelines: Sequence[str], by: str, reason: str
    ) -> None:
        self.posts.append((channel, texts.pipelines_halted(pipelines, by, reason)))

    def pipeline_resumed(self, channel: str, pipeline: str, by: str, force_reason: str) -> None:
        self.posts.append((channel, texts.pipeline_resumed(pipeline, by, force_reason)))

    def canary_held(
        self, rollout: Rollout, waiting: Sequence[str], decides_at: float, policy: str
    ) -> str | None:
        self.posts.append((rollout.channel, f"canary held: {', '.join(waiting) or 'decided'}"))
        return rollout.canary_prompt_ts or f"{START + 2000 + len(self.posts):.6f}"

    def routes_restored(self, channel: str, pipeline: str, text: Text) -> None:
        self.posts.append((channel, mrkdwn(text)))

    def incident_opened(self, incident: Incident) -> str | None:
        self.opened.append(incident)
        return f"{START + 1000 + len(self.opened):.6f}"

    def incident_chart(self, incident: Incident) -> None:
        self.charts.append(incident.id)

    def rollback_confirmed(self, incident: Incident, by: str, rollout_id: str) -> None:
        self.notes.append((incident.id, texts.rollback_confirmed(incident, by, rollout_id)))

    def analysis_recorded(self, incident: Incident, change: AnalysisChange) -> None:
        self.notes.append((incident.id, incident_messages.analysis_status(incident, change)))

    def incident_resumed(self, incident: Incident) -> None:
        self.notes.append((incident.id, incident_messages.resume_summary(incident)))


def web_config(**pipeline: Any) -> dict[str, Any]:
    """A pipelines config with one docker pipeline `web` (never run: no engine is used)."""
    web: dict[str, Any] = {
        "channel": CHANNEL,
        "image": "immune-test/web",
        "container": {"name": f"web-{secrets.token_hex(3)}"},
        "health": {"url": "http://127.0.0.1:9/healthz"},
        **pipeline,
    }
    return {"admins": ["U0ADMIN"], "pipelines": {"web": web}}


@contextmanager
def domain_context(
    client: redis.Redis,
    config: dict[str, Any],
    *,
    notifier: SilentNotifier | None = None,
    clock: Clock | None = None,
) -> Iterator[Context]:
    """A Context whose runner has no targets: for code that must not start rollouts."""
    clock = clock or FrozenClock(START)
    prefix = f"immune-unit-{secrets.token_hex(3)}"
    store = Store(client, Keys(prefix), clock)
    parsed = parse_pipelines(config)
    notifier = notifier or RecordingNotifier()
    runner = RolloutRunner(
        store=store,
        config=parsed,
        targets={},
        notifier=notifier,
        clock=clock,
        instance_id="unit",
        settings=RolloutSettings(lock_ttl_seconds=3),
    )
    try:
        yield Context(
            limits=Limits(lock_ttl_seconds=3),
            config=parsed,
            store=store,
            runner=runner,
            notifier=notifier,
            clock=clock,
            instance_id="unit",
        )
    finally:
        runner.shutdown()
