"""answer_once on a real Redis: a refused /deploy is answered and audited exactly once, its
audit entry written with the recorded answer in the same round trip."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from bot.domain.errors import Duplicate, NotAllowed, RolloutInFlight, UnknownPipeline, UsageError
from bot.domain.models import AuditEntry, Rollout, RolloutKind
from bot.domain.text import as_text
from bot.services import deploys
from bot.services.context import Context
from bot.services.requests import CommandRequest, Reply, answer_once, pipeline_snapshot
from bot.store.keys import Once
from bot.store.store import FirstClaim
from handlers.errors import asked_by, user_text_for
from tests.support.domain import CHANNEL, START, domain_context, web_config
from tests.support.round_trips import count_round_trips

DEPLOYER, OUTSIDER = "U0DEV1", "U0OUTSIDE"


@pytest.fixture
def ctx(redis_client: redis.Redis) -> Iterator[Context]:
    with domain_context(redis_client, web_config(deployers=[DEPLOYER], pull="never")) as made:
        yield made


def deploy(ctx: Context, text: str, user: str = DEPLOYER, trigger: str | None = "t-1") -> str:
    request = CommandRequest("/deploy", text, user, CHANNEL, request_id=trigger)
    return deploys.deploy(ctx, request).text.plain()


def hold_in_flight(ctx: Context, version: str = "1") -> Rollout:
    rollout = Rollout(
        id="r-unit-held",
        pipeline="web",
        kind=RolloutKind.deploy,
        version=version,
        reference=f"immune-test/web:{version}",
        image_tag=version,
        requested_by=DEPLOYER,
        created_at=START,
        channel=CHANNEL,
    )
    assert ctx.store.claim_rollout("web", rollout.id, 60) is None
    ctx.store.create_rollout(rollout)
    return rollout


def _packed(command: Any) -> bytes:
    """A command as redis-py sent it (one buffer, or a list of them)."""
    return command if isinstance(command, bytes) else b"".join(command)


def refusals(ctx: Context) -> list[AuditEntry]:
    return [e for e in ctx.store.audit_entries(limit=50) if e.outcome == "refused"]


def test_a_refusal_is_audited_with_its_answer_in_one_round_trip(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = hold_in_flight(ctx)
    ctx.store.claim_once_reading(Once.command, "warm-up", "web")  # scripts load once a server
    ctx.store.record_answer(
        Once.command, "warm-up", "{}", [ctx.store.audit_record(actor="x", action="y")]
    )
    sent = count_round_trips(monkeypatch)
    with pytest.raises(RolloutInFlight):
        deploy(ctx, "web 2")
    # The claim with the state and its holder's record (one script), then audit + answer
    # together.
    assert len(sent) == 2, sent
    [entry] = refusals(ctx)
    assert (entry.actor, entry.action, entry.pipeline) == (DEPLOYER, "deploy", "web")
    assert entry.detail == "rollout_in_flight; immune-test/web:2"
    assert entry.command == "/deploy web 2" and entry.at == START
    assert held.id in (ctx.store.first_answer(Once.command, "t-1") or "")


def test_a_redelivered_refusal_gets_the_first_answer_and_is_not_audited_again(
    ctx: Context,
) -> None:
    with pytest.raises(NotAllowed) as first:
        deploy(ctx, "web 2", user=OUTSIDER)
    with pytest.raises(Duplicate) as again:
        deploy(ctx, "web 2", user=OUTSIDER)
    assert first.value.message in again.value.message
    assert [e.detail for e in refusals(ctx)] == ["not_a_deployer"]


def test_without_a_request_id_a_refusal_is_audited_at_once(ctx: Context) -> None:
    with pytest.raises(NotAllowed):
        deploy(ctx, "web 2", user=OUTSIDER, trigger=None)
    assert [e.detail for e in refusals(ctx)] == ["not_a_deployer"]


def test_a_failure_after_a_refusal_still_audits_it_and_lets_a_retry_run(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    hold_in_flight(ctx)
    claim_reading = ctx.store.claim_once_reading

    def without_holder(kind: Once, subject: str, pipeline: str) -> FirstClaim:
        # The holder's record gone by the time the state was read (it names it still), so the
        # refusal reads it again, after its audit entry is pending: and Redis goes away.
        claim = claim_reading(kind, subject, pipeline)
        assert claim.snapshot is not None
        return dataclasses.replace(
            claim, snapshot=dataclasses.replace(claim.snapshot, inflight_record=None)
        )

    def unreachable(rollout_id: str) -> Any:
        raise redis.ConnectionError("Redis went away")

    monkeypatch.setattr(ctx.store, "claim_once_reading", without_holder)
    monkeypatch.setattr(ctx.store, "rollout", unreachable)
    with pytest.raises(redis.ConnectionError):
        deploy(ctx, "web 2")
    assert [e.detail for e in refusals(ctx)] == ["rollout_in_flight; immune-test/web:2"]
    assert ctx.store.once_holder(Once.command, "t-1") is None, "a redelivery may try again"


def test_a_request_naming_no_configured_pipeline_reads_no_state(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx.store.claim_once(Once.command, "warm-up")
    sent = count_round_trips(monkeypatch)
    with pytest.raises(UnknownPipeline):
        deploy(ctx, "nosuch 2")
    # The claim alone (SET NX), then its answer kept (SET XX): no state script.
    claim, kept = (_packed(command) for command in sent)
    assert b"NX" in claim and b"XX" in kept and b"EVALSHA" not in claim + kept
    with pytest.raises(UsageError):
        deploy(ctx, "web", trigger="t-2")  # no version: usage, refused once, no state read


def test_a_redelivery_gets_the_first_answer_or_hears_it_is_pending(ctx: Context) -> None:
    assert ctx.store.claim_once_reading(Once.command, "t-1", "web").first
    pending = ctx.store.claim_once_reading(Once.command, "t-1", "web")
    assert (pending.first, pending.earlier_answer, pending.snapshot) == (False, None, None)
    with pytest.raises(Duplicate, match="being handled once"):
        deploy(ctx, "web 2")
    ctx.store.record_answer(Once.command, "t-1", '"the answer"')
    again = ctx.store.claim_once_reading(Once.command, "t-1", "web")
    assert (again.first, again.earlier_answer) == (False, '"the answer"')


def test_the_state_read_with_the_claim_is_handed_out_once(ctx: Context) -> None:
    seen: list[str] = []

    def handle() -> Reply:
        seen.append(pipeline_snapshot(ctx, "web").state.status.value)
        ctx.store.halt("web", by=DEPLOYER, reason="changed meanwhile")
        seen.append(pipeline_snapshot(ctx, "web").state.status.value)
        return Reply(as_text("ok"))

    answer_once(ctx, Once.command, "t-5", "a test", handle, reads="web")
    assert seen == ["open", "halted"], "a second read sees what changed since the claim"


def test_entries_written_with_an_answer_keep_their_order_and_time(ctx: Context) -> None:
    ctx.store.audit(actor="U0A", action="before")
    assert ctx.store.claim_once(Once.command, "t-9")
    records = [ctx.store.audit_record(actor="U0A", action=f"refused {n}") for n in (1, 2)]
    ctx.store.record_answer(Once.command, "t-9", '"the answer"', records)
    assert ctx.store.first_answer(Once.command, "t-9") == '"the answer"'
    entries = ctx.store.audit_entries(limit=10)
    assert [e.action for e in entries] == ["refused 2", "refused 1", "before"]
    assert len({e.id for e in entries}) == 3 and all(e.at == START for e in entries)


def test_a_refusal_is_logged_once(ctx: Context, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    body = {"command": "/deploy", "text": "web 2", "user_id": OUTSIDER}
    with pytest.raises(NotAllowed) as refused:
        deploy(ctx, "web 2", user=OUTSIDER)
    user_text_for(refused.value, logging.getLogger("handlers.errors"), asked_by(body))
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert lines == [
        f"refused (not_allowed) {OUTSIDER} /deploy web 2: You are not a deployer of `web`."
    ]
