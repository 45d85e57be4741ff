"""A bot Context on a real Redis without Slack, Docker or HTTP: for domain-level tests."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from bot.domain.clock import FrozenClock
from bot.domain.config import PipelinesConfig
from bot.domain.incidents import AnalysisChange, Incident
from bot.domain.models import Rollout
from bot.domain.text import Text
from bot.plugins import parse_pipelines
from bot.ports import SilentNotifier, Target
from bot.services import deploys, halts
from bot.services.context import Context, Limits
from bot.services.requests import CommandRequest
from bot.services.runner import RolloutRunner, RolloutSettings
from bot.services.traffic import Routers
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

    def tell_person(self, channel: str, user: str, text: Text) -> None:
        self.told.append((f"{channel}:{user}", mrkdwn(text)))

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

    def engine_changed(self, channel: str, pipelines: Sequence[str], text: Text) -> None:
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


class ContextRig:
    """The use cases over a real Redis: a frozen clock, a recording notifier, the runner with
    the given targets (and routers), and the Context the handlers would get. The unit tests'
    rigs build on it."""

    def __init__(
        self,
        client: redis.Redis,
        config: PipelinesConfig,
        targets: dict[str, Target],
        *,
        routers: Routers | None = None,
        clock: FrozenClock | None = None,
    ) -> None:
        self.clock = clock or FrozenClock(START)
        self.store = Store(client, Keys(f"immune-unit-{secrets.token_hex(3)}"), self.clock)
        self.notifier = RecordingNotifier()
        self.config = config
        self.runner = RolloutRunner(
            store=self.store,
            config=config,
            targets=targets,
            notifier=self.notifier,
            clock=self.clock,
            instance_id="unit",
            settings=RolloutSettings(lock_ttl_seconds=3),
            routers=routers,
        )
        self.ctx = Context(
            limits=Limits(lock_ttl_seconds=3),
            config=config,
            store=self.store,
            runner=self.runner,
            notifier=self.notifier,
            clock=self.clock,
            instance_id="unit",
        )

    def command(self, command: str, text: str, user: str = "U0ADMIN") -> str:
        """A /deploy, /rollback or /halt as the handler runs it; the answer in Slack's words."""
        request = CommandRequest(command, text, user, CHANNEL, response_url="http://127.0.0.1:9/r")
        operation = {"/deploy": deploys.deploy, "/rollback": deploys.rollback, "/halt": halts.halt}
        return mrkdwn(operation[command](self.ctx, request).text)

    def newest(self, pipeline: str = "web") -> Rollout:
        [rollout] = self.store.recent_rollouts(pipeline, 1)
        return rollout

    def settled(self, rollout_id: str, done: Callable[[Rollout], bool]) -> Rollout:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rollout = self.store.rollout(rollout_id)
            if rollout is not None and done(rollout):
                return rollout
            time.sleep(0.01)
        raise AssertionError(f"{rollout_id} did not settle: {self.store.rollout(rollout_id)}")

    def finished(self, rollout_id: str) -> Rollout:
        return self.settled(rollout_id, lambda r: r.status.finished)


@contextmanager
def domain_context(client: redis.Redis, config: dict[str, Any]) -> Iterator[Context]:
    """A Context whose runner has no targets: for code that must not start rollouts."""
    rig = ContextRig(client, parse_pipelines(config), {})
    try:
        yield rig.ctx
    finally:
        rig.runner.shutdown()
