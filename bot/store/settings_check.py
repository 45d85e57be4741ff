"""At start: does this Redis keep what the bot writes? Its eviction policy and its persistence.

Redis is the bot's memory (rollouts, locks, claims, approvals, the audit trail). A Redis that
evicts keys when it fills up would drop some of them silently, so any `maxmemory-policy` but
`noeviction` is refused, whatever `maxmemory` is now (a `CONFIG SET maxmemory` later would start
the evicting at once). That includes the `volatile-*` policies: they evict only keys with a TTL,
but the bot's rollout locks, run claims, poll-slot claims and pending approvals are exactly
those keys; losing a lock lets two replicas run one pipeline's rollout. With `noeviction` a full
Redis refuses writes, which the bot reports as an error instead of losing state.

A Redis with neither an append-only file nor RDB snapshots loses everything on restart: a loud
warning, not a refusal (a test or throwaway rig may run so on purpose). Managed Redis often
renames or disables CONFIG; then the bot says it could not check and goes on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from bot.domain.errors import SettingsError

logger = logging.getLogger(__name__)

SAFE_POLICY = "noeviction"


@dataclass(frozen=True)
class RedisDurability:
    """What the start-up check read; `checked` False when CONFIG GET could not be used."""

    checked: bool
    policy: str | None = None
    aof: bool | None = None
    rdb: bool | None = None
    reason: str | None = None  # why it was not checked

    @property
    def persistent(self) -> bool | None:
        if not self.checked:
            return None
        return bool(self.aof or self.rdb)

    def as_health(self) -> dict[str, object]:
        """The /healthz view: what persistence the bot runs on."""
        if not self.checked:
            return {"settings": "not checked", "reason": self.reason}
        kinds = [name for name, on in (("aof", self.aof), ("rdb", self.rdb)) if on]
        return {"maxmemory_policy": self.policy, "persistence": "+".join(kinds) or "none"}


def _config_value(client: redis.Redis, name: str) -> str:
    values = client.config_get(name)
    if name not in values:
        raise redis.ResponseError(f"CONFIG GET {name} returned no value")
    return str(values[name])


def read_durability(client: redis.Redis) -> RedisDurability:
    """Read the eviction policy and persistence; never raises for a Redis that hides them."""
    try:
        policy = _config_value(client, "maxmemory-policy")
        appendonly = _config_value(client, "appendonly")
        save = _config_value(client, "save")
    except redis.ResponseError as exc:
        # "unknown command 'CONFIG'" when renamed or disabled; NOPERM for an ACL user without it.
        return RedisDurability(checked=False, reason=f"CONFIG GET refused: {exc}")
    except redis.RedisError as exc:
        return RedisDurability(checked=False, reason=f"Redis did not answer: {type(exc).__name__}")
    return RedisDurability(
        checked=True,
        policy=policy,
        aof=appendonly.strip().lower() == "yes",
        rdb=bool(save.strip()),
    )


def check_redis_settings(client: redis.Redis) -> RedisDurability:
    """Refuse an evicting Redis (SettingsError); warn loudly about one that keeps nothing."""
    found = read_durability(client)
    if not found.checked:
        logger.warning(
            "could not check Redis' maxmemory-policy and persistence (%s): managed Redis often "
            "disables CONFIG; make sure it runs with maxmemory-policy noeviction and AOF or RDB, "
            "or the bot's state can be lost",
            found.reason,
        )
        return found
    if found.policy != SAFE_POLICY:
        raise SettingsError(
            f"Redis maxmemory-policy is {found.policy!r}: Redis would evict the bot's state "
            f"(rollouts, locks, approvals) when it fills up. Set `maxmemory-policy {SAFE_POLICY}` "
            f"(redis.conf, or CONFIG SET maxmemory-policy {SAFE_POLICY})"
        )
    if not found.persistent:
        logger.warning(
            "REDIS KEEPS NOTHING ON DISK: appendonly is no and save is empty, so a Redis restart "
            "loses every rollout, lock, approval and the audit trail. Run Redis with "
            "`appendonly yes` (or RDB snapshots with `save`)"
        )
    else:
        logger.info(
            "Redis keeps the bot's state: maxmemory-policy %s, persistence %s",
            found.policy,
            found.as_health()["persistence"],
        )
    return found
