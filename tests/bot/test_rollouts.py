"""The rollout rules and the runner's state machine on a memory target: no Docker needed.

Also the defects fixed with the layering (issue 10): the image is located inside the ack only
for `pull: never`; the runner starts nothing until it is started; a queued orphan runs once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from bot.domain.approvals import APPROVED, REJECTED
from bot.domain.errors import (
    AlreadyLive,
    DigestMismatch,
    ImageNotFound,
    NotAllowed,
    RolloutInFlight,
    UnknownTag,
)
from bot.domain.models import Rollout, RolloutKind, RolloutStatus
from bot.plugins import TargetPlugin, default_registry, parse_pipelines
from bot.services import approvals, recovery
from bot.slack.render import mrkdwn
from bot.store.store import Store
from tests.support.domain import CHANNEL, START, ContextRig
from tests.support.fakes import MEMORY, MemoryTarget, check_memory_pipeline, memory_config

DIGEST_9 = "sha256:" + "9" * 64

REGISTRY = default_registry().add_target(
    TargetPlugin(name=MEMORY, build=lambda shared: MemoryTarget(), check=check_memory_pipeline)
)


def queued(store: Store, rollout_id: str, kind: RolloutKind, version: str) -> Rollout:
    """A rollout accepted and holding the lock, as start_rollout leaves it, not yet run."""
    rollout = Rollout(
        id=rollout_id,
        pipeline="web",
        kind=kind,
        version=version,
        reference=f"example/web:{version}",
        image_tag=version,
        requested_by="U0DEV1",
        created_at=START,
        channel=CHANNEL,
    )
    store.claim_rollout("web", rollout.id, 3)
    store.create_rollout(rollout)
    return rollout


class Rig(ContextRig):
    def __init__(self, client: redis.Redis, raw: dict[str, Any], target: MemoryTarget) -> None:
        super().__init__(client, parse_pipelines(raw, registry=REGISTRY), {MEMORY: target})
        self.target = target


@pytest.fixture
def make(redis_client: redis.Redis) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make_rig(target: MemoryTarget | None = None, **web: Any) -> Rig:
        rig = Rig(redis_client, memory_config(**web), target or MemoryTarget(images={"1", "2"}))
        rigs.append(rig)
        return rig

    yield make_rig
    for rig in rigs:
        rig.runner.shutdown(wait=True)


# Locating the image: in the ack only when it is a local look-up ---------------------------


def test_with_pull_never_a_missing_image_is_refused_in_the_ack_and_nothing_starts(
    make: Callable[..., Rig],
) -> None:
    rig = make(pull="never")
    with pytest.raises(ImageNotFound):
        rig.command("/deploy", "web 9")
    assert rig.target.calls == [("locate", "9")]
    assert rig.store.recent_rollouts("web", 5) == []
    assert rig.store.pipeline("web").inflight_rollout == ""


def test_with_pulls_allowed_the_ack_does_not_pull_the_runner_locates_once(
    make: Callable[..., Rig],
) -> None:
    rig = make(pull="missing")
    rig.target.digests["9"] = DIGEST_9
    answer = rig.command("/deploy", "web 9")
    assert answer.startswith("Deploying `example/web:9` (digest `sha256:999999999999`) to `web`"), (
        answer
    )
    failed = rig.finished(rig.newest().id)
    assert failed.status is RolloutStatus.failed
    assert failed.image_digest == DIGEST_9 and failed.reference == f"example/web@{DIGEST_9}"
    assert rig.target.calls == [("resolve", "9"), ("locate", "9")], (
        "the tag resolved in the ack (no pull), located once by the runner"
    )
    deadline = time.monotonic() + 5  # the requester hears of it just after the rollout fails
    while not rig.notifier.told and time.monotonic() < deadline:
        time.sleep(0.01)
    [(url, told)] = rig.notifier.told
    assert url == "http://127.0.0.1:9/r" and "is not in memory" in told


def test_with_pulls_allowed_an_unknown_tag_is_refused_in_the_ack_and_nothing_starts(
    make: Callable[..., Rig],
) -> None:
    rig = make(pull="missing")
    with pytest.raises(UnknownTag):
        rig.command("/deploy", "web 9")
    assert rig.target.calls == [("resolve", "9")]
    assert rig.store.recent_rollouts("web", 5) == []
    assert rig.store.pipeline("web").inflight_rollout == ""
    [refusal] = rig.store.audit_entries(pipeline="web", limit=5)
    assert (refusal.outcome, refusal.detail) == ("refused", "unknown_tag")


def test_a_tag_the_ack_could_not_resolve_is_resolved_as_the_rollouts_first_step(
    make: Callable[..., Rig],
) -> None:
    rig = make(
        pull="missing", target=MemoryTarget(images={"9"}, digests={"9": DIGEST_9}, slow={"9"})
    )
    answer = rig.command("/deploy", "web 9")
    assert "the rollout resolves the tag to its digest first" in answer, answer
    good = rig.finished(rig.newest().id)
    assert good.status is RolloutStatus.good, good.error
    assert good.image_digest == DIGEST_9 and good.reference == f"example/web@{DIGEST_9}"
    assert [s.name for s in good.steps][:2] == ["resolve tag", "locate image"]
    assert rig.target.calls == [
        ("resolve", "9"),
        ("resolve", "9"),
        ("locate", "9"),
        ("roll_out", "9"),
    ]


def test_a_busy_pipeline_refuses_before_asking_the_registry(
    make: Callable[..., Rig],
) -> None:
    rig = make(pull="missing")
    rig.target.digests["9"] = DIGEST_9
    queued(rig.store, "r-busy", RolloutKind.deploy, "1")
    rig.store.update_pipeline("web", inflight_rollout="r-busy")
    with pytest.raises(RolloutInFlight):
        rig.command("/deploy", "web 9")
    assert rig.target.calls == [], "refused before any registry lookup"


def test_tag_at_digest_that_the_tag_no_longer_points_at_is_refused(
    make: Callable[..., Rig],
) -> None:
    rig = make(pull="missing")
    rig.target.digests["9"] = DIGEST_9
    with pytest.raises(DigestMismatch, match="points at `sha256:999999999999`"):
        rig.command("/deploy", f"web example/web:9@sha256:{'a' * 64}")
    assert rig.store.recent_rollouts("web", 5) == []


# The runner's state machine -----------------------------------------------------------------


def test_a_deploy_without_kpis_is_good_at_once_and_becomes_the_last_good_version(
    make: Callable[..., Rig],
) -> None:
    rig = make()
    rig.command("/deploy", "web 1")
    good = rig.finished(rig.newest().id)
    assert good.status is RolloutStatus.good and good.live_at == START
    state = rig.store.pipeline("web")
    assert (state.live_version, state.last_good_version, state.inflight_rollout) == ("1", "1", "")
    [live] = [
        e
        for e in rig.store.audit_entries(pipeline="web", limit=10)
        if e.rollout == good.id and e.action == "deploy.live"
    ]
    assert live.outcome == "good"


def test_a_failed_swap_fails_the_rollout_and_says_the_old_version_serves(
    make: Callable[..., Rig],
) -> None:
    rig = make(target=MemoryTarget(images={"1", "2"}, failing={"2"}))
    rig.command("/deploy", "web 1")
    rig.finished(rig.newest().id)
    rig.clock.advance(1)  # the newest rollout is the one created last
    rig.command("/deploy", "web 2")
    failed = rig.finished(rig.newest().id)
    assert failed.status is RolloutStatus.failed
    assert failed.error == "2 did not become healthy"
    assert failed.notes == ["1 serves again"]
    assert [s.status.value for s in failed.steps] == ["done", "failed"]
    assert rig.store.pipeline("web").live_version == "1"
    audit = rig.store.audit_entries(pipeline="web", limit=10)
    assert next(e.outcome for e in audit if e.rollout == failed.id) == "failed"


def test_a_second_deploy_while_one_is_in_flight_is_refused_and_audited(
    make: Callable[..., Rig],
) -> None:
    gate = threading.Event()
    target = MemoryTarget(images={"1", "2"})
    original = target.roll_out

    def slow_roll_out(request: Any, progress: Any) -> Any:
        gate.wait(10)
        return original(request, progress)

    target.roll_out = slow_roll_out  # type: ignore[method-assign]
    rig = make(target=target)
    rig.command("/deploy", "web 1")
    first = rig.newest()
    with pytest.raises(RolloutInFlight) as refused:
        rig.command("/deploy", "web 2")
    assert "already in flight: deploy of `1` by <@U0ADMIN>" in mrkdwn(refused.value.text())
    assert "<!date^" in mrkdwn(refused.value.text()), "Slack shows the time in each reader's zone"
    assert "<@" not in refused.value.message, "the plain rendering (logs, Redis) has no mrkdwn"
    gate.set()
    assert rig.finished(first.id).status is RolloutStatus.good
    refusals = [
        e for e in rig.store.audit_entries(pipeline="web", limit=10) if e.outcome == "refused"
    ]
    assert [e.detail for e in refusals] == ["rollout_in_flight; example/web:2"]


def test_a_halt_before_the_swap_cancels_a_deploy_but_never_a_rollback(
    make: Callable[..., Rig],
) -> None:
    rig = make()
    rig.command("/deploy", "web 1")
    rig.finished(rig.newest().id)
    rig.store.halt("web", by="U0DEV1", reason="freeze")
    deploy = queued(rig.store, "r-unit-deploy", RolloutKind.deploy, "2")
    rig.runner.submit(deploy.id).result(10)
    cancelled = rig.store.rollout(deploy.id)
    assert cancelled is not None and cancelled.status is RolloutStatus.cancelled
    assert cancelled.error == "pipeline halted by U0DEV1: freeze"
    assert ("roll_out", "2") in rig.target.calls, "stopped at the target's safe point"
    assert rig.target.running["web"].version == "1"

    rollback = queued(rig.store, "r-unit-rollback", RolloutKind.rollback, "2")
    rig.runner.submit(rollback.id).result(10)
    assert rig.store.rollout(rollback.id).status is RolloutStatus.good  # type: ignore[union-attr]


# Starting and recovering ---------------------------------------------------------------------


def test_the_runner_starts_no_thread_until_it_is_started(make: Callable[..., Rig]) -> None:
    before = {t.ident for t in threading.enumerate() if t.name == "lock-heartbeat"}
    rig = make()
    after = {t.ident for t in threading.enumerate() if t.name == "lock-heartbeat"}
    assert not rig.runner.started and after == before
    rig.runner.start()
    rig.runner.start()  # idempotent
    started = {t.ident for t in threading.enumerate() if t.name == "lock-heartbeat"}
    assert rig.runner.started and len(started - before) == 1


def test_a_queued_orphan_is_run_once_by_the_recovery_worker(make: Callable[..., Rig]) -> None:
    rig = make()
    orphan = queued(rig.store, "r-unit-orphan", RolloutKind.deploy, "1")
    ran_on: list[str] = []
    original = rig.target.roll_out

    def recording(request: Any, progress: Any) -> Any:
        ran_on.append(threading.current_thread().name)
        return original(request, progress)

    rig.target.roll_out = recording  # type: ignore[method-assign]
    rig.runner.submit_recovery(orphan.id).result(10)
    rig.runner.submit(orphan.id).result(10)  # a late second submission finds it done
    assert rig.store.rollout(orphan.id).status is RolloutStatus.good  # type: ignore[union-attr]
    assert len(ran_on) == 1 and ran_on[0].startswith("rollout"), ran_on


# Approvals ------------------------------------------------------------------------------------

LEAD, DEV = "U0LEAD", "U0DEV1"


def press(rig: Rig, rollout_id: str, user: str, decision: str, n: int) -> str:
    reply = approvals.decide(rig.ctx, rollout_id, user, decision, f"trigger-{n}:1.0")
    return mrkdwn(reply.text)


def test_an_approval_from_a_listed_approver_runs_the_rollout_once(
    make: Callable[..., Rig],
) -> None:
    rig = make(approvals={"approvers": [LEAD, DEV], "required": 1})
    asked = rig.command("/deploy", "web 1", user=DEV)
    assert asked.startswith(f"`web` needs approval: asked in <#{CHANNEL}>"), asked
    request = rig.newest()
    assert request.status is RolloutStatus.awaiting_approval
    with pytest.raises(NotAllowed, match="cannot approve it yourself"):
        press(rig, request.id, DEV, APPROVED, 1)
    with pytest.raises(NotAllowed, match="not an approver"):
        press(rig, request.id, "U0OTHER", APPROVED, 2)
    approved = press(rig, request.id, LEAD, APPROVED, 3)
    assert approved.startswith("Approved (1 of 1): deploying `example/web:1`"), approved
    assert rig.finished(request.id).status is RolloutStatus.good
    again = press(rig, request.id, LEAD, APPROVED, 4)
    assert again == f"{request.id} is already approved by <@{LEAD}>; the rollout is on its way."
    assert [c for c in rig.target.calls if c[0] == "roll_out"] == [("roll_out", "1")]


def test_a_rejection_is_stored_plainly_and_shown_with_a_mention(make: Callable[..., Rig]) -> None:
    rig = make(approvals={"approvers": [LEAD], "required": 1})
    rig.command("/deploy", "web 1", user=DEV)
    request = rig.newest()
    assert press(rig, request.id, LEAD, REJECTED, 1).startswith("Rejected: `example/web:1`")
    rejected = rig.store.rollout(request.id)
    assert rejected is not None and rejected.status is RolloutStatus.rejected
    assert (rejected.error, rejected.ended_by) == ("rejected", LEAD), "no markup in Redis"
    assert rejected.why().plain() == f"rejected by {LEAD}"
    [(_, told)] = rig.notifier.told
    assert f"was rejected by <@{LEAD}>: nothing was deployed." in told
    assert rig.store.pipeline("web").inflight_rollout == "", "the pipeline is free again"
    assert rig.target.calls == [("locate", "1")], "located in the ack (pull: never), never run"


class BotKilled(Exception):
    """The bot died here."""


def test_a_rejection_frees_the_pipeline_in_the_write_that_records_it(
    make: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rejection was written, then the lock freed: a bot killed between left the pipeline
    locked by a rejected request until the lock lapsed (the approvals' expiry plus the lock's
    TTL), every /deploy refused meanwhile as in flight."""
    rig = make(approvals={"approvers": [LEAD], "required": 1})
    rig.command("/deploy", "web 1", user=DEV)
    request = rig.newest()

    def dies_once_rejected(write: Callable[..., Rollout]) -> Callable[..., Rollout]:
        def then_dies(*args: Any, **kwargs: Any) -> Rollout:
            written = write(*args, **kwargs)
            if written.status is RolloutStatus.rejected:
                raise BotKilled("killed right after the rejection was written")
            return written

        return then_dies

    for write in ("update_rollout", "settle_rollout"):
        monkeypatch.setattr(rig.store, write, dies_once_rejected(getattr(rig.store, write)))
    with pytest.raises(BotKilled):
        press(rig, request.id, LEAD, REJECTED, 1)
    monkeypatch.undo()
    assert rig.store.rollout(request.id).status is RolloutStatus.rejected  # type: ignore[union-attr]
    assert rig.store.pipeline("web").inflight_rollout == ""
    assert rig.store.rollout_lock_holder("web") is None
    assert rig.command("/deploy", "web 2", user=DEV).startswith("`web` needs approval")


def test_a_rollout_adopted_with_its_outcome_written_is_only_freed(
    make: Callable[..., Rig],
) -> None:
    """A rollout whose outcome was written while it still held the lock (a bot of before the
    one-write end, or any path that writes the outcome first): recovery adopted it as if it
    had run, asked the engine to undo it and wrote `failed` over its outcome."""
    rig = make(approvals={"approvers": [LEAD], "required": 1})
    rig.command("/deploy", "web 1", user=DEV)
    request = rig.newest()

    def rejected(r: Rollout) -> None:
        r.status, r.error, r.ended_by = RolloutStatus.rejected, "rejected", LEAD

    rig.store.update_rollout(request.id, rejected)  # the outcome, the lock still held
    rig.store.redis.delete(rig.store.keys.rollout_lock("web"))  # its TTL ran out
    calls = list(rig.target.calls)
    assert recovery.recover_orphans(rig.ctx) == [request.id]
    deadline = time.monotonic() + 10
    while rig.store.pipeline("web").inflight_rollout:
        assert time.monotonic() < deadline, "the pipeline was not freed"
        time.sleep(0.01)
    ended = rig.store.rollout(request.id)
    assert (
        ended is not None and ended.status is RolloutStatus.rejected and ended.error == "rejected"
    )
    assert rig.target.calls == calls, "nothing asked of the engine"


def test_a_deploy_or_rollback_of_the_live_version_is_refused_and_audited(
    make: Callable[..., Rig],
) -> None:
    rig = make()
    rig.command("/deploy", "web 1")
    rig.finished(rig.newest().id)
    for command in ("/deploy", "/rollback"):
        with pytest.raises(AlreadyLive):
            rig.command(command, "web 1")
    refused = [
        (e.action, e.detail)
        for e in rig.store.audit_entries(pipeline="web", limit=10)
        if e.outcome == "refused"
    ]
    assert sorted(refused) == [("deploy", "already_live"), ("rollback", "already_live")]
