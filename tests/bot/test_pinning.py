"""Which exact image a rollback runs (bot.services.pinning.image_that_ran) on a real Redis."""

from __future__ import annotations

import secrets

import pytest
import redis

from bot.domain.clock import FrozenClock
from bot.domain.config import Pipeline
from bot.domain.models import Rollout, RolloutKind
from bot.services.pinning import image_that_ran
from bot.store.keys import Keys
from bot.store.store import Store
from tests.support.domain import CHANNEL, START
from tests.support.round_trips import count_round_trips

DIGEST_OLD = "sha256:" + "a" * 64
DIGEST_NEW = "sha256:" + "b" * 64


def ran(rollout_id: str, version: str, digest: str | None, at: float) -> Rollout:
    return Rollout(
        id=rollout_id,
        pipeline="web",
        kind=RolloutKind.deploy,
        version=version,
        reference=f"127.0.0.1:15000/web:{version}",
        image_tag=version,
        image_digest=digest,
        requested_by="U0DEV1",
        created_at=at,
        live_at=at + 1,
        channel=CHANNEL,
    )


@pytest.fixture
def store(redis_client: redis.Redis) -> Store:
    store = Store(redis_client, Keys(f"immune-unit-{secrets.token_hex(3)}"), FrozenClock(START))
    store.create_rollout(ran("r-old", "1", DIGEST_OLD, START))
    store.create_rollout(ran("r-2", "2", None, START + 10))
    store.create_rollout(ran("r-new", "1", DIGEST_NEW, START + 20))
    store.create_rollout(ran("r-unpinned", "1", None, START + 30))
    return store


@pytest.fixture
def pipeline() -> Pipeline:
    return Pipeline.model_validate(
        {
            "channel": CHANNEL,
            "image": "127.0.0.1:15000/web",
            "container": {"name": "web"},
            "health": {"url": "http://127.0.0.1:9/healthz"},
        }
    )


def test_the_newest_rollout_of_the_version_with_a_digest_pins_it(
    store: Store, pipeline: Pipeline
) -> None:
    assert image_that_ran(store, "web", pipeline, "1").digest == DIGEST_NEW
    assert image_that_ran(store, "web", pipeline, "2").digest is None
    assert image_that_ran(store, "web", pipeline, "3").digest is None


def test_a_named_rollout_of_the_version_decides_alone_in_one_round_trip(
    store: Store, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = count_round_trips(monkeypatch)
    assert image_that_ran(store, "web", pipeline, "1", "r-old").digest == DIGEST_OLD
    unpinned = image_that_ran(store, "web", pipeline, "1", "r-unpinned")
    assert unpinned.digest is None, "it ran unpinned: an older digest of the tag is not what ran"
    assert len(sent) == 2, "one read each, no scan of the history"
    # A rollout of another version (or none) names nothing: the history is searched.
    assert image_that_ran(store, "web", pipeline, "1", "r-2").digest == DIGEST_NEW
    assert image_that_ran(store, "web", pipeline, "1", "r-gone").digest == DIGEST_NEW
