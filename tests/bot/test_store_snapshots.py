"""Store.pipeline_snapshots on a real Redis: each pipeline's state with the rollouts it names,
for any number of pipelines, in one round trip."""

from __future__ import annotations

import secrets
import threading

import pytest
import redis

from bot.domain.clock import FrozenClock
from bot.domain.models import PipelineStatus, Rollout, RolloutKind, RolloutStatus
from bot.store.keys import Keys, Once
from bot.store.store import AuditRecord, Store
from tests.support.domain import CHANNEL, START
from tests.support.round_trips import count_round_trips


def rollout(rollout_id: str, pipeline: str, version: str) -> Rollout:
    return Rollout(
        id=rollout_id,
        pipeline=pipeline,
        kind=RolloutKind.deploy,
        version=version,
        reference=f"example/{pipeline}:{version}",
        image_tag=version,
        requested_by="U0DEV1",
        created_at=START,
        channel=CHANNEL,
    )


@pytest.fixture
def store(redis_client: redis.Redis) -> Store:
    return Store(redis_client, Keys(f"immune-unit-{secrets.token_hex(3)}"), FrozenClock(START))


def live_and_in_flight(store: Store) -> tuple[Rollout, Rollout]:
    """Pipeline `web` with version 1 live and good, and version 2's rollout in flight."""
    live, inflight = rollout("r-live", "web", "1"), rollout("r-next", "web", "2")
    store.create_rollout(live)
    store.create_rollout(inflight)
    store.update_pipeline("web", live_version="1", live_rollout=live.id, last_good_version="1")
    assert store.claim_rollout("web", inflight.id, 3) is None
    return live, inflight


def test_every_pipeline_with_its_rollouts_in_one_round_trip(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    live, inflight = live_and_in_flight(store)
    store.update_pipeline("api", live_rollout="r-gone")  # a record that has expired
    store.halt("db", by="U0ADMIN", reason="maintenance")
    store.pipeline_snapshots(["web"])  # the script is loaded once per server

    sent = count_round_trips(monkeypatch)
    snapshots = store.pipeline_snapshots(["web", "api", "db", "new"])
    assert len(sent) == 1

    web = snapshots["web"]
    assert web.state == store.pipeline("web")
    assert web.state.live_version == "1" and web.state.inflight_rollout == inflight.id
    assert web.live == live and web.inflight == inflight
    assert snapshots["api"].live is None and snapshots["api"].state.live_rollout == "r-gone"
    db = snapshots["db"].state
    assert db.status is PipelineStatus.halted and db.halted_at == START
    assert db.halted_reason == "maintenance"
    new = snapshots["new"]
    assert new.state == store.pipeline("new") and new.live is None and new.inflight is None


def test_a_snapshot_parses_a_record_only_when_it_is_read(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    live, inflight = live_and_in_flight(store)
    parsed: list[str] = []
    parse = Rollout.model_validate_json

    def counted(raw: str) -> Rollout:
        made = parse(raw)
        parsed.append(made.id)
        return made

    monkeypatch.setattr(Rollout, "model_validate_json", counted)
    web = store.pipeline_snapshots(["web"])["web"]
    assert web.state.inflight_rollout == inflight.id
    assert parsed == [], "a reader of the state alone validates no record"
    assert web.inflight == inflight and web.inflight == inflight
    assert parsed == [inflight.id], "the in-flight record, once"
    assert web.live == live
    assert parsed == [inflight.id, live.id]


def test_no_pipelines_no_round_trip(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    sent = count_round_trips(monkeypatch)
    assert store.pipeline_snapshots([]) == {}
    assert sent == []


def test_the_script_is_loaded_again_after_the_server_forgot_it(
    store: Store, redis_client: redis.Redis
) -> None:
    store.update_pipeline("web", live_version="1")
    store.pipeline_snapshots(["web"])
    redis_client.script_flush()
    assert store.pipeline_snapshots(["web"])["web"].state.live_version == "1"


def test_newest_rollout_reads_once_and_parses_only_until_one_matches(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(1, 6):
        made = rollout(f"r-{n}", "web", str(n)).model_copy(update={"created_at": START + n})
        store.create_rollout(made)
    asked: list[str] = []

    def is_three_or_less(r: Rollout) -> bool:
        asked.append(r.version)
        return int(r.version) <= 3

    sent = count_round_trips(monkeypatch)
    found = store.newest_rollout("web", is_three_or_less, 50)
    assert found is not None and found.id == "r-3"
    assert asked == ["5", "4", "3"], "newest first, no further than the match"
    assert len(sent) == 2, "the ids, then every record in one MGET"
    assert store.newest_rollout("web", lambda r: False, 50) is None
    assert store.newest_rollout("web", lambda r: True, 2) == store.rollout("r-5")
    assert store.newest_rollout("nothing-here", lambda r: True, 50) is None


def test_a_rollout_is_opened_with_its_lock_record_and_audit_in_one_round_trip(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = rollout("r-first", "web", "2"), rollout("r-second", "web", "3")
    store.claim_rollout("warm-up", "r-warm", 3)  # the script is loaded once per server

    def accepted(opened: Rollout) -> AuditRecord:
        return store.audit_record(
            actor="U0DEV1", action="deploy", pipeline="web", outcome="accepted", rollout=opened.id
        )

    sent = count_round_trips(monkeypatch)
    assert store.open_rollout(first, 3, accepted(first)) is None
    assert len(sent) == 1, sent
    assert store.rollout_lock_holder("web") == first.id
    assert store.pipeline("web").inflight_rollout == first.id
    assert store.rollout(first.id) == first
    assert [r.id for r in store.recent_rollouts("web")] == [first.id]
    [entry] = store.audit_entries(pipeline="web")
    assert (entry.rollout, entry.outcome, entry.at) == (first.id, "accepted", START)
    # The lock taken: the holder is named and nothing of the second is written.
    assert store.open_rollout(second, 3, accepted(second)) == first.id
    assert store.rollout(second.id) is None
    assert [r.id for r in store.recent_rollouts("web")] == [first.id]
    assert len(store.audit_entries(pipeline="web")) == 1


def test_concurrent_updates_of_a_rollout_lose_nothing_in_two_round_trips_each(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.create_rollout(rollout("r-busy", "web", "2"))
    store.update_rollout("r-busy", lambda r: r.notes.append("warm-up"))  # the script loads
    sent = count_round_trips(monkeypatch)
    store.update_rollout("r-busy", lambda r: r.notes.append("alone"))
    assert len(sent) == 2, "read, then compare-and-set"

    def writer(name: str) -> None:
        for n in range(40):
            note = f"{name}{n}"
            store.update_rollout("r-busy", lambda r, note=note: r.notes.append(note))

    threads = [threading.Thread(target=writer, args=(name,)) for name in "xyz"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    busy = store.rollout("r-busy")
    assert busy is not None and len(busy.notes) == 2 + 3 * 40
    for name in "xyz":
        assert [n for n in busy.notes if n[0] == name] == [f"{name}{n}" for n in range(40)]


def test_an_update_of_a_record_deleted_meanwhile_writes_nothing(store: Store) -> None:
    store.create_rollout(rollout("r-gone", "web", "2"))

    def delete_first(r: Rollout) -> None:
        store.redis.delete(store.keys.rollout("r-gone"))  # another writer removed it
        r.notes.append("too late")

    with pytest.raises(KeyError):
        store.update_rollout("r-gone", delete_first)
    assert store.rollout("r-gone") is None


def test_scripts_loaded_at_start_spare_the_first_ack_two_round_trips(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = count_round_trips(monkeypatch)
    store.redis.script_flush()  # as after a Redis restart
    sent.clear()
    store.claim_once_reading(Once.command, "t-cold", "web")
    assert len(sent) == 3, "refused EVALSHA, SCRIPT LOAD, EVALSHA"
    store.redis.script_flush()
    store.load_scripts()
    sent.clear()
    store.claim_once_reading(Once.command, "t-warm", "web")
    assert len(sent) == 1, sent


def test_settling_a_rollout_writes_its_outcome_its_pipeline_and_frees_only_its_own_lock(
    store: Store, redis_client: redis.Redis
) -> None:
    """Store.settle_rollout: one write, so no reader (and no crash) sees one without the other;
    a change that leaves the rollout in flight keeps its lock; a lock another rollout has taken
    meanwhile stays that rollout's."""
    first, second = rollout("r-1", "web", "1"), rollout("r-2", "web", "2")
    store.create_rollout(first)
    store.create_rollout(second)
    assert store.claim_rollout("web", first.id, 30) is None
    store.settle_rollout(first.id, lambda r: setattr(r, "status", RolloutStatus.in_flight))
    assert store.rollout_lock_holder("web") == first.id, "still in flight: still held"
    assert store.pipeline("web").inflight_rollout == first.id
    # Another writer changes the record between the read and the write: the change is retried
    # on what it left, not lost.
    other = Store(redis_client, store.keys, store.clock)
    raced: list[str] = []

    def live(r: Rollout) -> None:
        if not raced:
            raced.append(r.id)
            other.update_rollout(r.id, lambda o: o.notes.append("written meanwhile"))
        r.status = RolloutStatus.live

    settled = store.settle_rollout(first.id, live, live_version="1", live_rollout=first.id)
    assert settled.status is RolloutStatus.live and settled.notes == ["written meanwhile"]
    assert store.rollout(first.id) == settled
    state = store.pipeline("web")
    assert (state.live_version, state.live_rollout, state.inflight_rollout) == ("1", "r-1", "")
    assert store.rollout_lock_holder("web") is None

    assert store.claim_rollout("web", second.id, 30) is None
    store.settle_rollout(first.id, lambda r: r.notes.append("late"))
    assert store.rollout_lock_holder("web") == second.id
    assert store.pipeline("web").inflight_rollout == second.id
    with pytest.raises(KeyError):
        store.settle_rollout("r-gone", lambda r: None)
