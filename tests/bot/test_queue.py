"""The deploy queue on a real Redis and a memory target: places, the atomic take, and what
`start_due` does with busy, shut, halted and refused pipelines."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from bot.domain.errors import Duplicate
from bot.domain.models import RolloutStatus
from bot.domain.queue import QueuedDeploy, WaitsFor
from bot.plugins import TargetPlugin, default_registry, parse_pipelines
from bot.services import queue
from bot.services.forms import wants_form
from tests.support.domain import CHANNEL, START, ContextRig
from tests.support.fakes import MEMORY, MemoryTarget, check_memory_pipeline, memory_config

REGISTRY = default_registry().add_target(
    TargetPlugin(name=MEMORY, build=lambda shared: MemoryTarget(), check=check_memory_pipeline)
)
DEV, DEV2 = "U0DEV1", "U0DEV2"


class Rig(ContextRig):
    def __init__(self, client: redis.Redis, raw: dict[str, Any], target: MemoryTarget) -> None:
        super().__init__(client, parse_pipelines(raw, registry=REGISTRY), {MEMORY: target})
        self.target = target


@pytest.fixture
def make(redis_client: redis.Redis) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make_rig(**web: Any) -> Rig:
        rig = Rig(redis_client, memory_config(**web), MemoryTarget(images={"1", "2"}))
        rigs.append(rig)
        return rig

    yield make_rig
    for rig in rigs:
        rig.runner.shutdown(wait=True)


def entry(user: str, version: str = "2", at: float = START) -> QueuedDeploy:
    return QueuedDeploy(
        id=f"q-{user}-{version}",
        pipeline="web",
        version=version,
        requested_by=user,
        channel=CHANNEL,
        queued_at=at,
        waits_for=WaitsFor.in_flight,
    )


def test_one_place_per_person_taken_in_order_and_exactly_once(make: Callable[..., Rig]) -> None:
    store = make().store
    assert store.enqueue(entry(DEV2, at=START + 1)) is None
    assert store.enqueue(entry(DEV, "1", at=START)) is None
    held = store.enqueue(entry(DEV2, "1", at=START + 2))
    assert held is not None and held.version == "2", "the first place is kept"
    assert [(e.requested_by, e.version) for e in store.queue("web")] == [(DEV, "1"), (DEV2, "2")]
    assert store.queued_pipelines() == ["web"]

    # Leaving takes only that person's place.
    assert store.take_queued("web", user=DEV2) == entry(DEV2, at=START + 1)
    assert store.take_queued("web", user=DEV2) is None
    store.requeue(entry(DEV2, at=START + 1))

    # Twenty takers at once: every entry goes to exactly one of them.
    for n in range(30):
        store.enqueue(entry(f"U{n:03d}", at=START + 10 + n))
    taken: list[str] = []
    lock = threading.Lock()

    def take_all() -> None:
        while (got := store.take_queued("web")) is not None:
            with lock:
                taken.append(got.requested_by)

    threads = [threading.Thread(target=take_all) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken) == sorted([DEV, DEV2] + [f"U{n:03d}" for n in range(30)])
    assert store.queue("web") == [] and store.queued_pipelines() == []


def test_start_due_waits_for_a_free_open_pipeline_and_rechecks_every_rule(
    make: Callable[..., Rig],
) -> None:
    rig = make(deployers=[DEV, DEV2], windows=[{"days": "mon-sun", "hours": "09:00-17:00"}])
    ctx = rig.ctx
    rig.clock.set(START - START % 86400 + 8 * 3600)  # 08:00 UTC: shut
    joined = queue.join_queue(
        ctx, user=DEV, channel=CHANNEL, pipeline="web", version="2", request_id="t1"
    )
    assert joined.holds_place and "when its window opens" in joined.reply.text.plain()
    assert queue.start_due(ctx) == 0

    rig.clock.advance(3600)  # 09:00: open
    rig.store.halt("web", by=DEV2, reason="freeze")
    assert queue.start_due(ctx) == 0, "a halt freezes the queue"
    rig.store.reopen("web")
    assert queue.start_due(ctx) == 1
    started = rig.newest()
    assert (started.version, started.requested_by) == ("2", DEV)
    assert started.status is not RolloutStatus.awaiting_approval
    assert any(
        to == f"{CHANNEL}:{DEV}" and "Your queued deploy started." in text
        for to, text in rig.notifier.told
    )
    rig.finished(started.id)

    # DEV2 queued, then lost the deployer role: told why, not started.
    queue.join_queue(ctx, user=DEV2, channel=CHANNEL, pipeline="web", version="1", request_id="t2")
    ctx.config = parse_pipelines(memory_config(deployers=[DEV]), registry=REGISTRY)
    assert queue.start_due(ctx) == 0
    assert ctx.store.queue("web") == []
    assert any(
        to == f"{CHANNEL}:{DEV2}" and "did not start" in text and "not a deployer" in text
        for to, text in rig.notifier.told
    )


def test_which_deploy_commands_ask_for_the_form() -> None:
    assert wants_form("/deploy", "") and wants_form("/deploy", "web")
    assert not wants_form("/deploy", "web 2")
    assert not wants_form("/deploy", "help")
    assert not wants_form("/deploy", "--force")
    assert not wants_form("/rollback", "")


def test_an_entry_a_dead_replica_took_is_started_once_after_its_lease(
    make: Callable[..., Rig],
) -> None:
    rig = make()
    ctx, store = rig.ctx, rig.store
    # A replica took DEV's entry and died before starting it; another took DEV2's, started it
    # (the rollout exists) and died before settling the entry.
    store.enqueue(entry(DEV, "1", at=START - 10))
    store.enqueue(entry(DEV2, "2", at=START - 5))
    lease = START + queue.START_LEASE_SECONDS
    assert store.take_queued("web", lease_until=lease) == entry(DEV, "1", at=START - 10)
    assert store.take_queued("web", lease_until=lease) == entry(DEV2, "2", at=START - 5)
    rig.command("/deploy", "web 2", user=DEV2)
    rig.finished(rig.newest().id)
    assert store.queue("web") == [] and store.queued_pipelines() == ["web"]

    assert queue.start_due(ctx) == 0, "within the lease the taker may still settle them"
    rig.clock.advance(queue.START_LEASE_SECONDS + 1)
    assert queue.start_due(ctx) == 1
    ones = [r for r in store.recent_rollouts("web", 10) if r.version == "1"]
    twos = [r for r in store.recent_rollouts("web", 10) if r.version == "2"]
    assert [r.requested_by for r in ones] == [DEV] and len(twos) == 1, "each started once"
    # DEV2's had started: settled as such, never tried again (it would be refused as live).
    assert not any("did not start" in text for _, text in rig.notifier.told)
    rig.finished(ones[0].id)
    assert queue.start_due(ctx) == 0
    assert store.queue("web") == [] and store.queued_pipelines() == []


def test_joining_a_halted_pipelines_queue_says_it_waits_for_resume(
    make: Callable[..., Rig],
) -> None:
    rig = make()
    rig.store.halt("web", by=DEV2, reason="freeze")
    joined = queue.join_queue(
        rig.ctx, user=DEV, channel=CHANNEL, pipeline="web", version="2", request_id="t3"
    )
    assert "when the pipeline is resumed (it is halted" in joined.reply.text.plain()
    assert queue.start_due(rig.ctx) == 0
    # A redelivery of the same press gets the first answer again, and no second place.
    with pytest.raises(Duplicate, match="Already answered that button press"):
        queue.join_queue(
            rig.ctx, user=DEV, channel=CHANNEL, pipeline="web", version="2", request_id="t3"
        )
    assert [e.requested_by for e in rig.store.queue("web")] == [DEV]
