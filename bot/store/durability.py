"""Nothing Slack was told may be lost in a Redis failover: WAIT for replicas before telling.

Redis replicates asynchronously. If the primary dies, a write it acknowledged but had not yet
sent to a replica is gone once that replica is promoted. So before each answer to Slack (the
ack of a command, button or event) and each message the bot posts (rollout progress, alerts),
the bot waits until `replicas` replicas hold everything written so far (`WAIT`), for at most
`timeout_ms`. A timeout is logged and counted (`immune_redis_unreplicated_total`); the answer
still goes out: a Redis with no replica left must not stop the bot. While replicas are missing
the WAIT is tried again only every DEGRADED_RETRY_SECONDS, so each answer does not pay the
whole timeout.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any, cast

import redis

from bot import metrics
from bot.ports import Notifier

logger = logging.getLogger(__name__)

MARKER_TTL_MS = 60_000
DEGRADED_RETRY_SECONDS = 5.0


class ReplicationBarrier:
    """`WAIT replicas timeout` covering every write this process made before the call."""

    def __init__(self, client: redis.Redis, key: str, replicas: int, timeout_ms: int) -> None:
        self.client = client
        self.key = key
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self._degraded_until = 0.0  # monotonic; after a short WAIT, skip WAITs until then

    def __call__(self) -> int:
        """How many replicas acknowledged (-1: skipped, replicas missing); logged when short."""
        if time.monotonic() < self._degraded_until:
            metrics.REDIS_UNREPLICATED.inc()
            return -1
        # WAIT covers the writes of its own connection, and a pooled client has many. One
        # small write on the WAIT's connection moves that connection's replication offset past
        # every write the server has already applied, from any connection of this process.
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.key, "1", px=MARKER_TTL_MS)
        pipe.wait(self.replicas, self.timeout_ms)
        try:
            acknowledged = int(pipe.execute()[1])
        except redis.RedisError:
            logger.exception("could not WAIT for Redis replicas")
            metrics.REDIS_UNREPLICATED.inc()
            return 0
        if acknowledged < self.replicas:
            self._degraded_until = time.monotonic() + DEGRADED_RETRY_SECONDS
            logger.warning(
                "only %d of %d Redis replica(s) acknowledged within %d ms; "
                "answering Slack without waiting for %gs",
                acknowledged,
                self.replicas,
                self.timeout_ms,
                DEGRADED_RETRY_SECONDS,
            )
            metrics.REDIS_UNREPLICATED.inc()
        return acknowledged


class DurableNotifier:
    """A Notifier that waits for Redis replicas before each message it sends."""

    def __init__(self, inner: Notifier, barrier: ReplicationBarrier) -> None:
        self._inner = inner
        self._barrier = barrier

    @property
    def inner(self) -> Notifier:
        return self._inner

    def __getattr__(self, name: str) -> Any:
        # Every method of the wrapped notifier, present and future, is a message to Slack.
        attribute = getattr(self._inner, name)
        if name.startswith("_") or not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def after_replication(*args: Any, **kwargs: Any) -> Any:
            self._barrier()
            return attribute(*args, **kwargs)

        return after_replication


def durable(notifier: Notifier, barrier: ReplicationBarrier) -> Notifier:
    return cast(Notifier, DurableNotifier(notifier, barrier))
