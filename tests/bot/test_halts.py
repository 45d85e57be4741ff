"""/halt and /resume in the domain: the safe point, in-flight rollouts, what resume waits for."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
import redis

from bot.domain.errors import NotAllowed, ResumeRefused
from bot.domain.incidents import Incident
from bot.domain.models import Rollout, RolloutKind, RolloutStatus
from bot.ports import RolloutCancelled
from bot.services import halts
from bot.services.context import Context
from bot.services.incidents import create_incident, load_incident, update_incident
from bot.services.requests import CommandRequest
from bot.services.runner import RecordedProgress
from bot.slack.render import mrkdwn
from tests.support.domain import CHANNEL, START, RecordingNotifier, domain_context, web_config


@pytest.fixture
def ctx(redis_client: redis.Redis) -> Iterator[Context]:
    config = web_config()
    config["pipelines"]["api"] = {**config["pipelines"]["web"], "container": {"name": "api-x"}}
    with domain_context(redis_client, config) as context:
        yield context


def request(command: str, text: str, user: str = "U0DEV1") -> CommandRequest:
    return CommandRequest(command=command, text=text, user_id=user, channel_id=CHANNEL)


def in_flight(ctx: Context, kind: RolloutKind, status: RolloutStatus) -> Rollout:
    rollout = Rollout(
        id=f"r-{kind.value}",
        pipeline="web",
        kind=kind,
        version="2",
        reference="immune-test/web:2",
        image_tag="2",
        requested_by="U0DEV1",
        created_at=START,
        status=status,
    )
    ctx.store.create_rollout(rollout)
    ctx.store.update_pipeline("web", inflight_rollout=rollout.id)
    return rollout


def test_a_deploy_stops_at_its_next_safe_point_a_rollback_does_not(ctx: Context) -> None:
    deploy = RecordedProgress(ctx.runner, "r-1", "web", deploy=True)
    rollback = RecordedProgress(ctx.runner, "r-2", "web", deploy=False)
    deploy.check_cancelled()  # open: carries on
    halts.halt(ctx, request("/halt", "web broken dashboards"))
    with pytest.raises(RolloutCancelled, match="halted by U0DEV1: broken dashboards"):
        deploy.check_cancelled()
    rollback.check_cancelled()  # restoring service is never stopped by a halt


def test_halt_says_what_happens_to_the_rollout_in_flight(ctx: Context) -> None:
    rollout = in_flight(ctx, RolloutKind.deploy, RolloutStatus.in_flight)
    reply = halts.halt(ctx, request("/halt", "web"))
    assert mrkdwn(reply.text).startswith(":octagonal_sign: Halted `web`: no reason given.")
    assert f"the deploy of `2` ({rollout.id}) in flight stops at its next safe point" in mrkdwn(
        reply.text
    )
    halts.resume(ctx, request("/resume", "web"))

    rollout = in_flight(ctx, RolloutKind.rollback, RolloutStatus.in_flight)
    reply = halts.halt(ctx, request("/halt", "web"))
    assert f"the rollback of `2` ({rollout.id}) in flight goes on" in mrkdwn(reply.text)


def test_halt_all_marks_every_pipeline_before_telling_anyone(ctx: Context) -> None:
    seen: list[list[bool]] = []
    notifier = ctx.notifier
    assert isinstance(notifier, RecordingNotifier)
    original = notifier.pipelines_halted

    def halted(channel: str, pipelines: Sequence[str], by: str, reason: str) -> None:
        seen.append([ctx.store.pipeline(n).halted for n in ("api", "web")])
        original(channel, pipelines, by, reason)

    notifier.pipelines_halted = halted  # type: ignore[method-assign]
    reply = halts.halt(ctx, request("/halt", "all"))
    assert "Halted `api`, `web`" in mrkdwn(reply.text)
    assert seen == [[True, True]], "one announcement per channel, after every halt"
    assert [e.action for e in ctx.store.audit_entries(limit=5)] == ["halt", "halt"]


def test_resume_waits_for_the_analysis_of_the_incident(ctx: Context) -> None:
    incident = Incident(
        id="inc-1",
        pipeline="web",
        channel=CHANNEL,
        rollout_id="r-1",
        bad_version="3",
        kpi="error_rate",
        query="q",
        tolerance="error_rate ≤ 0.1",
        opened_at=START,
    )
    create_incident(ctx.store, incident)
    halts.halt_pipeline(ctx, "web", by="immune", reason="KPI breach", incident=incident.id)
    with pytest.raises(ResumeRefused) as refused:
        halts.resume(ctx, request("/resume", "web"))
    assert "Missing: why 1, why 2, why 3, why 4, why 5, root cause, failing test." in str(
        refused.value.message
    )
    with pytest.raises(NotAllowed):
        halts.resume(ctx, request("/resume", "web --force urgent"))

    def answer_all(i: Incident) -> None:
        for field in ("why 1", "why 2", "why 3", "why 4", "why 5", "root cause"):
            i.set_answer(field, "because", user="U0DEV2", source="modal")
        i.set_answer("failing test", "https://ci.example.com/1", user="U0DEV2", source="modal")

    update_incident(ctx.store, incident.id, answer_all)
    assert mrkdwn(halts.resume(ctx, request("/resume", "web")).text) == "`web` is open again."
    assert load_incident(ctx.store, incident.id).resumed_by == "U0DEV1"
