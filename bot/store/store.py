"""Pipeline state in Redis: the only memory the bot has, shared by every replica."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar, cast

import redis
from pydantic import BaseModel
from redis.commands.core import Script

from bot.domain.clock import Clock
from bot.domain.incidents import Incident, KpiSample
from bot.domain.models import AuditEntry, PipelineState, PipelineStatus, Rollout, WatchState
from bot.domain.queue import QueuedDeploy
from bot.store.keys import Keys, Once

logger = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=BaseModel)

# A watch changed by one replica (lengthened after an engine outage) while another may end it:
# the change lands only if the watch still exists.
_REPLACE_WATCH = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# Recovering an orphan: take the lock only if nobody holds it and the orphan is still in flight.
_ADOPT_ROLLOUT = """
if redis.call('GET', KEYS[1]) then return 0 end
if redis.call('HGET', KEYS[2], 'inflight_rollout') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_RENEW_IF_HOLDER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# A pipeline's lock and in-flight mark freed, where they are still `rollout`'s.
_RELEASE_FUNCTION = """
local function release(lock, pipeline, rollout)
  if redis.call('GET', lock) == rollout then redis.call('DEL', lock) end
  if redis.call('HGET', pipeline, 'inflight_rollout') == rollout then
    redis.call('HSET', pipeline, 'inflight_rollout', '')
  end
end
"""

_RELEASE_ROLLOUT = (
    _RELEASE_FUNCTION
    + """
release(KEYS[1], KEYS[2], ARGV[1])
return 1
"""
)

# A record written only if it is still what the writer read: {1, nil} when written, else
# {0, what is there now (nil: deleted)} for the writer to change again. The same outcome as
# WATCH/MULTI in one round trip fewer: a record rewritten with the same bytes meanwhile is the
# record the change was made to.
_COMPARE_AND_SET = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return {1, false}
end
return {0, current}
"""

# A rollout's outcome and the pipeline it leaves, in one write: the record compared and set
# as _COMPARE_AND_SET does, the pipeline's fields (ARGV[4..]) set, and its lock and in-flight
# mark released if they are still this rollout's (ARGV[3]; empty while the rollout written is
# still in flight: awaiting approval, queued, running). Written one after the other, a bot
# killed between the release and the record left a rollout in flight that no lock names:
# nobody's to recover, and behind a proxy a split nobody watches.
_SETTLE_ROLLOUT = (
    _RELEASE_FUNCTION
    + """
local current = redis.call('GET', KEYS[1])
if current ~= ARGV[1] then return {0, current} end
redis.call('SET', KEYS[1], ARGV[2])
if #ARGV > 3 then redis.call('HSET', KEYS[2], unpack(ARGV, 4)) end
if ARGV[3] ~= '' then release(KEYS[3], KEYS[2], ARGV[3]) end
return {1, false}
"""
)

_DELETE_IF_HOLDER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Audit entries are stamped with the bot's clock (so age and `since` mean the same time as
# `at`), never below the stream's last id (replicas' clocks differ), and everything older than
# the age cap is trimmed exactly: the stream is capped by age, never by count.
_APPEND_AUDIT_FUNCTION = """
local function append(stream, min_id, at_ms, fields)
  local id = at_ms
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if last[1] then
    local last_ms = string.match(last[1][1], '^(%d+)-')
    if tonumber(last_ms) > tonumber(id) then id = last_ms end
  end
  return redis.call('XADD', stream, 'MINID', min_id, id .. '-*', unpack(fields))
end
"""
# A rollout may start only when no lock is held and no earlier rollout is still recorded as in
# flight (an orphan from a crashed bot waits for reconciliation; it is not silently replaced):
# the pipeline's rollout lock, else the holder's id. With a rollout's record (KEYS[3..5],
# ARGV[3..]) the rollout is opened in the same step: its record written, listed under the
# pipeline, and its acceptance audited, so the lock never names a rollout without a record
# and the ack spends one round trip on all of it.
_CLAIM_ROLLOUT = (
    _APPEND_AUDIT_FUNCTION
    + """
local holder = redis.call('GET', KEYS[1])
if holder then return holder end
local inflight = redis.call('HGET', KEYS[2], 'inflight_rollout')
if inflight and inflight ~= '' then return inflight end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], 'inflight_rollout', ARGV[1])
if KEYS[3] then
  redis.call('SET', KEYS[3], ARGV[3])
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
  append(KEYS[5], ARGV[5], ARGV[6], {unpack(ARGV, 7)})
end
return false
"""
)

_AUDIT_APPEND = (
    _APPEND_AUDIT_FUNCTION + "return append(KEYS[1], ARGV[1], ARGV[2], {unpack(ARGV, 3)})\n"
)

# An answer kept for the redeliveries of a request (as record_answer), with the audit entries
# of what was refused, atomically and in one round trip: the entries first, so whoever finds
# the answer finds them. ARGV[1]: the answer; ARGV[2]: how many entries; then each entry as
# its length n and n strings (min id, at ms, field, value, ...).
_ANSWER_WITH_AUDIT = (
    _APPEND_AUDIT_FUNCTION
    + """
local at = 3
for _ = 1, tonumber(ARGV[2]) do
  local n = tonumber(ARGV[at])
  local entry = {unpack(ARGV, at + 1, at + n)}
  append(KEYS[2], entry[1], entry[2], {unpack(entry, 3)})
  at = at + n + 1
end
return redis.call('SET', KEYS[1], ARGV[1], 'XX', 'KEEPTTL')
"""
)

# Set the fingerprint of what a person's Home tab shows, unless it already shows that: the one
# caller that gets 1 publishes, so replicas refreshing at once publish a change once.
_SWAP_HOME_SHOWN = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# A place in a pipeline's queue, unless the person already holds one there (then that one).
_ENQUEUE = """
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held then return held end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[4])
return false
"""

# The first of a pipeline's queue, taken out: of several replicas starting queued deploys at
# once, exactly one gets each entry. ARGV[1]: the entry's id when only that one may be taken,
# ARGV[2] the person whose entry it is ("" for whoever is first), ARGV[4] the taker's lease
# end: with one, the entry is kept as "starting" until the taker settles it (finish_starting),
# so a taker that dies half-way is recovered, not lost. A pipeline stays in the set of queues
# while anything of it is queued or starting.
_TAKE_QUEUED = """
local function forget_if_empty()
  if redis.call('ZCARD', KEYS[1]) == 0 and redis.call('HLEN', KEYS[4]) == 0 then
    redis.call('SREM', KEYS[3], ARGV[3])
  end
end
local user = ARGV[2]
if user == '' then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0)
  if not first[1] then
    forget_if_empty()
    return false
  end
  user = first[1]
end
local entry = redis.call('HGET', KEYS[2], user)
if not entry then
  redis.call('ZREM', KEYS[1], user)
  return false
end
if ARGV[1] ~= '' and cjson.decode(entry)['id'] ~= ARGV[1] then return false end
redis.call('HDEL', KEYS[2], user)
redis.call('ZREM', KEYS[1], user)
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[4], user, entry)
  redis.call('ZADD', KEYS[5], ARGV[4], user)
end
forget_if_empty()
return entry
"""

# A started (or refused, or re-queued) entry is settled: no longer starting.
_FINISH_STARTING = """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('ZCARD', KEYS[3]) == 0 and redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[4], ARGV[2])
end
return 1
"""

# A starting entry whose taker's lease ended (the taker died): one caller gets it, with a new
# lease, to settle it. Returns {user, entry} pairs flattened.
_RECLAIM_STARTING = """
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
local found = {}
for _, user in ipairs(stale) do
  local entry = redis.call('HGET', KEYS[1], user)
  if entry then
    redis.call('ZADD', KEYS[2], ARGV[2], user)
    table.insert(found, entry)
  else
    redis.call('ZREM', KEYS[2], user)
  end
end
return found
"""

# A pipeline's record with the records of its in-flight and live rollouts: what /pipeline
# shows, read in one round trip however many pipelines are asked for (and what a /deploy or
# /rollback reads with its claim). The rollout keys are built from the rollout key prefix, not
# passed in KEYS: fine on one server or a Sentinel set, not on Redis Cluster.
_SNAPSHOT_FUNCTION = """
local function snapshot(key, rollout_prefix)
  local state = redis.call('HGETALL', key)
  local inflight, live = false, false
  for j = 1, #state, 2 do
    local field, value = state[j], state[j + 1]
    if value ~= '' then
      if field == 'inflight_rollout' then
        inflight = redis.call('GET', rollout_prefix .. value)
      elseif field == 'live_rollout' then
        live = redis.call('GET', rollout_prefix .. value)
      end
    end
  end
  return {state, inflight, live}
end
"""

_PIPELINE_SNAPSHOTS = (
    _SNAPSHOT_FUNCTION
    + """
local snapshots = {}
for i, key in ipairs(KEYS) do
  snapshots[i] = snapshot(key, ARGV[1])
end
return snapshots
"""
)

# The once-only claim of a request and the state of the pipeline it names, in one round trip:
# a redelivery gets what the first delivery left instead (pending, or its answer).
_CLAIM_WITH_SNAPSHOT = (
    _SNAPSHOT_FUNCTION
    + """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0, redis.call('GET', KEYS[1])}
end
return {1, snapshot(KEYS[2], ARGV[3])}
"""
)

# A delivery already seen: "1" while the first is being handled, then its answer.
_PENDING = "1"
_STREAK = "streak:"  # field prefix in a watch's hash
MAX_SAMPLES_PER_ROLLOUT = 2000
SAMPLES_KEPT_SECONDS = 30 * 86400


def _answer_in(value: str | None) -> str | None:
    """The answer a claim's value keeps ("=" then the answer); None while still pending."""
    return value[1:] if value and value.startswith("=") else None


@dataclass(frozen=True)
class AuditRecord:
    """An audit entry stamped when it happened, to append (with the age cap's trim point)."""

    entry: AuditEntry
    min_id: int

    def args(self) -> list[str | int]:
        """The append script's arguments: trim point, time (ms), then field, value, ...

        The fields in the model's order, read off the entry (a model_dump would copy it
        first: this runs in every refusal's ack)."""
        entry = self.entry
        pairs: list[str | int] = [self.min_id, int(entry.at * 1000)]
        for name in _AUDIT_FIELDS:
            pairs += (name, repr(entry.at) if name == "at" else str(getattr(entry, name)))
        return pairs


_AUDIT_FIELDS = tuple(name for name in AuditEntry.model_fields if name != "id")


@dataclass(frozen=True)
class PipelineSnapshot:
    """A pipeline's state and the rollouts it names, as read together at one moment.

    Each rollout's record is parsed when first asked for: most readers need the state only
    (an already-live refusal, the engine view's job, the recovery and proxy-route passes, which
    skip a pipeline with a rollout in flight), and validating a record costs more than reading
    it.
    """

    state: PipelineState
    inflight_record: str | None  # the in-flight rollout's JSON, as stored
    live_record: str | None  # the live rollout's JSON, as stored

    @cached_property
    def inflight(self) -> Rollout | None:
        return Rollout.model_validate_json(self.inflight_record) if self.inflight_record else None

    @cached_property
    def live(self) -> Rollout | None:
        return Rollout.model_validate_json(self.live_record) if self.live_record else None


def _snapshot(name: str, answer: list[Any]) -> PipelineSnapshot:
    """A pipeline snapshot from the snapshot script's answer: the state hash's flat pairs, the
    in-flight and the live rollout's records (false when none)."""
    flat, inflight, live = answer
    return PipelineSnapshot(
        PipelineState.from_hash(name, dict(zip(flat[::2], flat[1::2], strict=True))),
        inflight or None,
        live or None,
    )


@dataclass(frozen=True)
class FirstClaim:
    """A request's once-only claim, read with the state of the pipeline it names."""

    first: bool  # this delivery claimed the request
    earlier_answer: str | None  # not first: what the first delivery was told (None: pending)
    snapshot: PipelineSnapshot | None  # first: the pipeline's state at the claim


class StoreUnreachable(Exception):
    """Redis did not answer: the connection was refused or lost, or it timed out."""


_UNANSWERED = (redis.ConnectionError, redis.TimeoutError)
"""What redis-py raises when Redis does not answer (rather than refusing a command)."""


def _text(value: str | float | None) -> str:
    """A pipeline field as its hash keeps it: None is empty."""
    return "" if value is None else str(value)


class Store:
    """Typed access to the bot's Redis keys."""

    @staticmethod
    def is_unreachable(error: BaseException) -> bool:
        """Whether `error` says Redis did not answer (rather than that a command was wrong)."""
        return isinstance(error, (StoreUnreachable, *_UNANSWERED))

    def __init__(
        self, client: redis.Redis, keys: Keys, clock: Clock, audit_max_age_days: float = 90.0
    ) -> None:
        self.redis = client
        self.keys = keys
        self.clock = clock
        self.audit_max_age_days = audit_max_age_days
        self._scripts: list[Script] = []
        self._claim = self._script(_CLAIM_ROLLOUT)
        self._adopt = self._script(_ADOPT_ROLLOUT)
        self._renew = self._script(_RENEW_IF_HOLDER)
        self._release = self._script(_RELEASE_ROLLOUT)
        self._delete_if_holder = self._script(_DELETE_IF_HOLDER)
        self._audit_append = self._script(_AUDIT_APPEND)
        self._answer_with_audit = self._script(_ANSWER_WITH_AUDIT)
        self._pipeline_snapshots = self._script(_PIPELINE_SNAPSHOTS)
        self._claim_with_snapshot = self._script(_CLAIM_WITH_SNAPSHOT)
        self._swap_home_shown = self._script(_SWAP_HOME_SHOWN)
        self._enqueue = self._script(_ENQUEUE)
        self._take_queued = self._script(_TAKE_QUEUED)
        self._finish_starting = self._script(_FINISH_STARTING)
        self._reclaim_starting = self._script(_RECLAIM_STARTING)
        self._replace_watch = self._script(_REPLACE_WATCH)
        self._compare_and_set = self._script(_COMPARE_AND_SET)
        self._settle_rollout = self._script(_SETTLE_ROLLOUT)

    def _script(self, source: str) -> Script:
        script = self.redis.register_script(source)
        self._scripts.append(script)
        return script

    def load_scripts(self) -> None:
        """Load every script into Redis's cache now, in one round trip: otherwise each one's
        first call after a start (the first /deploy's ack among them) pays two more round
        trips, the refused EVALSHA and the load. Redis forgets them on a restart or failover;
        redis-py then loads each again on its first NOSCRIPT."""
        with self.redis.pipeline(transaction=False) as pipe:
            for script in self._scripts:
                pipe.script_load(script.script)
            pipe.execute()

    def ping(self) -> bool:
        return bool(self.redis.ping())

    def reachable(self) -> bool:
        """One PING; False instead of an error when Redis does not answer."""
        try:
            return self.ping()
        except _UNANSWERED:
            return False

    # Pipelines ---------------------------------------------------------------------------

    def pipeline(self, name: str) -> PipelineState:
        data = cast(dict[str, str], self.redis.hgetall(self.keys.pipeline(name)))
        return PipelineState.from_hash(name, data)

    def pipeline_snapshot(self, name: str) -> PipelineSnapshot:
        """One pipeline's state with its in-flight and live rollouts, in one round trip (a
        refusal for a rollout in flight names it without reading it again)."""
        return self.pipeline_snapshots([name])[name]

    def pipeline_snapshots(self, names: Sequence[str]) -> dict[str, PipelineSnapshot]:
        """Each pipeline's state with its in-flight and live rollouts, in one round trip."""
        if not names:
            return {}
        answers = cast(
            list[list[Any]],
            self._pipeline_snapshots(
                keys=[self.keys.pipeline(name) for name in names], args=[self.keys.rollout("")]
            ),
        )
        return {name: _snapshot(name, answer) for name, answer in zip(names, answers, strict=True)}

    def update_pipeline(self, name: str, **fields: str | float | None) -> None:
        mapping: dict[Any, Any] = {k: _text(v) for k, v in fields.items()}
        self.redis.hset(self.keys.pipeline(name), mapping=mapping)

    def halt(self, name: str, *, by: str, reason: str, incident: str = "") -> None:
        self.update_pipeline(
            name,
            status=PipelineStatus.halted.value,
            halted_by=by,
            halted_reason=reason,
            halted_at=self.clock.now(),
            halted_incident=incident,
        )

    def reopen(self, name: str) -> None:
        self.update_pipeline(
            name,
            status=PipelineStatus.open.value,
            halted_by="",
            halted_reason="",
            halted_at="",
            halted_incident="",
        )

    # The one-rollout-per-pipeline lock -------------------------------------------------

    def claim_rollout(self, pipeline: str, rollout_id: str, ttl_seconds: float) -> str | None:
        """Take the pipeline's rollout lock; returns the holder's rollout id when taken."""
        holder = self._claim(
            keys=self._lock_keys(pipeline), args=[rollout_id, int(ttl_seconds * 1000)]
        )
        return cast(str, holder) if holder else None

    def open_rollout(
        self, rollout: Rollout, ttl_seconds: float, accepted: AuditRecord
    ) -> str | None:
        """`claim_rollout`, and with the lock the rollout's record written (as
        `create_rollout`) and `accepted` audited, atomically, in one round trip. Returns the
        holder's rollout id when the lock was taken (nothing written then). The entry's log
        line is the caller's (`log_audit`): a rollback behind a proxy moves the requests
        first."""
        name = rollout.pipeline
        holder = self._claim(
            keys=[
                *self._lock_keys(name),
                self.keys.rollout(rollout.id),
                self.keys.pipeline_rollouts(name),
                self.keys.audit(),
            ],
            args=[
                rollout.id,
                int(ttl_seconds * 1000),
                rollout.model_dump_json(),
                repr(rollout.created_at),
                *accepted.args(),
            ],
        )
        if holder:
            return cast(str, holder)
        return None

    def _lock_keys(self, pipeline: str) -> list[str]:
        """The pipeline's lock and its state (which keeps the in-flight mark), as the lock's
        scripts take them."""
        return [self.keys.rollout_lock(pipeline), self.keys.pipeline(pipeline)]

    def adopt_rollout(self, pipeline: str, rollout_id: str, ttl_seconds: float) -> bool:
        args: list[str | int] = [rollout_id, int(ttl_seconds * 1000)]
        return bool(self._adopt(keys=self._lock_keys(pipeline), args=args))

    def renew_rollout_lock(self, pipeline: str, rollout_id: str, ttl_seconds: float) -> bool:
        keys = [self.keys.rollout_lock(pipeline)]
        return bool(self._renew(keys=keys, args=[rollout_id, int(ttl_seconds * 1000)]))

    def release_rollout(self, pipeline: str, rollout_id: str) -> None:
        self._release(keys=self._lock_keys(pipeline), args=[rollout_id])

    def rollouts_in_flight(self, pipelines: list[str]) -> list[tuple[str, str, bool]]:
        """(pipeline, in-flight rollout id, lock held) for each pipeline with a rollout in
        flight: one round trip for all of them, since every replica asks every 2 s."""
        pipe = self.redis.pipeline(transaction=False)
        for name in pipelines:
            pipe.hget(self.keys.pipeline(name), "inflight_rollout")
            pipe.exists(self.keys.rollout_lock(name))
        answers = pipe.execute()
        found = []
        for index, name in enumerate(pipelines):
            inflight, locked = answers[2 * index], answers[2 * index + 1]
            if inflight:
                found.append((name, str(inflight), bool(locked)))
        return found

    def rollout_lock_holder(self, pipeline: str) -> str | None:
        return cast(str | None, self.redis.get(self.keys.rollout_lock(pipeline)))

    # Which replica runs a rollout (a lease renewed while it works) ---------------------

    def take_runner_lease(self, rollout_id: str, instance: str, ttl_seconds: float) -> bool:
        key = self.keys.rollout_runner(rollout_id)
        return bool(self.redis.set(key, instance, nx=True, px=int(ttl_seconds * 1000)))

    def renew_runner_lease(self, rollout_id: str, instance: str, ttl_seconds: float) -> bool:
        keys = [self.keys.rollout_runner(rollout_id)]
        return bool(self._renew(keys=keys, args=[instance, int(ttl_seconds * 1000)]))

    def drop_runner_lease(self, rollout_id: str, instance: str) -> None:
        self._delete_if_holder(keys=[self.keys.rollout_runner(rollout_id)], args=[instance])

    def runner_of(self, rollout_id: str) -> str | None:
        return cast(str | None, self.redis.get(self.keys.rollout_runner(rollout_id)))

    # Rollouts ----------------------------------------------------------------------------

    def create_rollout(self, rollout: Rollout) -> None:
        pipe = self.redis.pipeline()
        pipe.set(self.keys.rollout(rollout.id), rollout.model_dump_json())
        pipe.zadd(self.keys.pipeline_rollouts(rollout.pipeline), {rollout.id: rollout.created_at})
        pipe.execute()

    def rollout(self, rollout_id: str) -> Rollout | None:
        raw = cast(str | None, self.redis.get(self.keys.rollout(rollout_id)))
        return None if raw is None else Rollout.model_validate_json(raw)

    def update_rollout(self, rollout_id: str, change: Callable[[Rollout], None]) -> Rollout:
        """Apply `change` atomically (optimistic WATCH/MULTI): replicas never lose an update."""
        return self._rollout_changed(rollout_id, change)

    def settle_rollout(
        self,
        rollout_id: str,
        change: Callable[[Rollout], None],
        **fields: str | float | None,
    ) -> Rollout:
        """`update_rollout`, and in the same atomic write the pipeline's `fields` and, once
        the change leaves the rollout no longer in flight (live, good, failed, rejected, ...),
        its lock and in-flight mark released (where still this rollout's): whoever sees the
        outcome sees the pipeline as it now is, and a bot killed on the way left either the
        lock held (recovery adopts the rollout) or the outcome written. A change that leaves
        it in flight (an approval short of the count, a request approved and queued) keeps
        them."""
        pipeline_args = [arg for field, value in fields.items() for arg in (field, _text(value))]

        def pipeline_of(rollout: Rollout) -> tuple[list[str], list[str]]:
            name = rollout.pipeline
            frees = "" if rollout.status.in_flight_states else rollout.id
            keys = [self.keys.pipeline(name), self.keys.rollout_lock(name)]
            return keys, [frees, *pipeline_args]

        return self._rollout_changed(rollout_id, change, self._settle_rollout, pipeline_of)

    def _rollout_changed(
        self,
        rollout_id: str,
        change: Callable[[Rollout], None],
        write: Script | None = None,
        also: Callable[[Rollout], tuple[list[str], list[str]]] | None = None,
    ) -> Rollout:
        try:
            updated = self.update_model(self.keys.rollout(rollout_id), Rollout, change, write, also)
        except _UNANSWERED as exc:
            raise StoreUnreachable(f"Redis did not answer ({exc})") from exc
        if updated is None:
            raise KeyError(f"rollout {rollout_id} does not exist")
        return updated

    def update_model(
        self,
        key: str,
        model: type[ModelT],
        change: Callable[[ModelT], None],
        write: Script | None = None,
        also: Callable[[ModelT], tuple[list[str], list[str]]] | None = None,
    ) -> ModelT | None:
        """Read the JSON record at `key`, apply `change`, write it back, atomically; None if
        there is none. Optimistic: the write is a compare-and-set against the record as read
        (one script), retried on what another writer left. Two round trips, where WATCH, GET
        and MULTI/SET/EXEC took three: a breach's claim is one of these. `write`: a script
        that compares and sets as _COMPARE_AND_SET does and also writes the keys with the
        arguments `also` gives for the changed record."""
        write = write or self._compare_and_set
        raw = cast(str | None, self.redis.get(key))
        while raw is not None:
            record = model.model_validate_json(raw)
            change(record)
            keys, args = also(record) if also is not None else ([], [])
            written, current = cast(
                list[Any],
                write(keys=[key, *keys], args=[raw, record.model_dump_json(), *args]),
            )
            if written:
                return record
            raw = current
        return None

    def recent_rollouts(self, pipeline: str, limit: int = 10) -> list[Rollout]:
        ids = cast(
            list[str], self.redis.zrevrange(self.keys.pipeline_rollouts(pipeline), 0, limit - 1)
        )
        return self._rollouts(ids)

    def newest_rollout(
        self, pipeline: str, matches: Callable[[Rollout], bool], limit: int
    ) -> Rollout | None:
        """The newest of the pipeline's last `limit` rollouts that `matches`: one round trip
        for the records, parsed newest first only until one matches (a rollback's look-up of
        the digest a version ran with sits in Slack's ack)."""
        ids = cast(
            list[str], self.redis.zrevrange(self.keys.pipeline_rollouts(pipeline), 0, limit - 1)
        )
        if not ids:
            return None
        raws = cast(list[str | None], self.redis.mget([self.keys.rollout(i) for i in ids]))
        for raw in raws:
            if raw is not None and matches(rollout := Rollout.model_validate_json(raw)):
                return rollout
        return None

    def _rollouts(self, ids: Iterable[str]) -> list[Rollout]:
        ids = list(ids)
        if not ids:
            return []
        raws = cast(list[str | None], self.redis.mget([self.keys.rollout(i) for i in ids]))
        return [Rollout.model_validate_json(raw) for raw in raws if raw is not None]

    # Incidents ---------------------------------------------------------------------------

    def create_incident(self, incident: Incident) -> None:
        pipe = self.redis.pipeline()
        pipe.set(self.keys.incident(incident.id), incident.model_dump_json())
        pipe.zadd(
            self.keys.pipeline_incidents(incident.pipeline), {incident.id: incident.opened_at}
        )
        pipe.execute()

    def incident(self, incident_id: str) -> Incident | None:
        raw = cast(str | None, self.redis.get(self.keys.incident(incident_id)))
        return None if raw is None else Incident.model_validate_json(raw)

    def update_incident(
        self, incident_id: str, change: Callable[[Incident], None]
    ) -> Incident | None:
        """Apply `change` atomically (WATCH/MULTI); None if there is no such incident."""
        return self.update_model(self.keys.incident(incident_id), Incident, change)

    def link_incident_thread(self, channel: str, thread_ts: str, incident_id: str) -> None:
        self.redis.set(self.keys.incident_by_thread(channel, thread_ts), incident_id)

    def incident_for_thread(self, channel: str, thread_ts: str) -> str | None:
        return cast(str | None, self.redis.get(self.keys.incident_by_thread(channel, thread_ts)))

    # The engines ----------------------------------------------------------------------

    def mark_engine_down(self, engine: str, since: float) -> bool:
        """True for the one replica that finds `engine` unreachable first (it tells people)."""
        return bool(self.redis.set(self.keys.engine_down(engine), repr(since), nx=True))

    def clear_engine_down(self, engine: str) -> None:
        """The outage is over and handled: every replica resumes at its next ping."""
        self.redis.delete(self.keys.engine_down(engine))

    def engine_down_since(self, engine: str) -> float | None:
        since = cast(str | None, self.redis.get(self.keys.engine_down(engine)))
        return None if since is None else float(since)

    # Watches -----------------------------------------------------------------------------

    def start_watch(self, watch: WatchState) -> None:
        self.redis.hset(self.keys.watches(), watch.rollout_id, watch.model_dump_json())

    def watches(self) -> dict[str, WatchState]:
        raw = cast(dict[str, str], self.redis.hgetall(self.keys.watches()))
        return {rid: WatchState.model_validate_json(value) for rid, value in raw.items()}

    def watch(self, rollout_id: str) -> WatchState | None:
        raw = cast(str | None, self.redis.hget(self.keys.watches(), rollout_id))
        return None if raw is None else WatchState.model_validate_json(raw)

    def replace_watch(self, watch: WatchState) -> bool:
        """Store a changed watch (lengthened after an engine outage), unless it ended meanwhile."""
        return bool(
            self._replace_watch(
                keys=[self.keys.watches()], args=[watch.rollout_id, watch.model_dump_json()]
            )
        )

    def end_watch(self, rollout_id: str) -> None:
        """Forget a watch: its streaks go at once; its samples are kept SAMPLES_KEPT_SECONDS
        (an incident keeps its own copy of those that breached), so Redis does not grow."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hdel(self.keys.watches(), rollout_id)
        pipe.delete(self.keys.watch(rollout_id))
        pipe.expire(self.keys.samples(rollout_id), SAMPLES_KEPT_SECONDS)
        pipe.execute()

    def claim_poll_slot(
        self, rollout_id: str, slot: int, instance: str, ttl_seconds: float
    ) -> bool:
        """Take poll `slot` of a watch for this replica; False if another replica has it."""
        key = self.keys.poll_slot(rollout_id, slot)
        return bool(self.redis.set(key, instance, nx=True, px=int(ttl_seconds * 1000)))

    def streaks(self, rollout_id: str) -> dict[str, int]:
        """Polls in a row beyond tolerance, by KPI name."""
        raw = cast(dict[str, str], self.redis.hgetall(self.keys.watch(rollout_id)))
        return {
            field.removeprefix(_STREAK): int(value or 0)
            for field, value in raw.items()
            if field.startswith(_STREAK)
        }

    def record_poll(
        self, rollout_id: str, slot: int, streaks: dict[str, int], samples: list[KpiSample]
    ) -> None:
        """A poll's streaks and samples, in one round trip; only the slot's holder writes, so
        no transaction is needed."""
        fields: dict[str, int] = {"last_slot": slot}
        fields.update({_STREAK + kpi: streak for kpi, streak in streaks.items()})
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.watch(rollout_id), mapping=cast(dict[Any, Any], fields))
        if samples:
            key = self.keys.samples(rollout_id)
            pipe.rpush(key, *(sample.model_dump_json() for sample in samples))
            pipe.ltrim(key, -MAX_SAMPLES_PER_ROLLOUT, -1)
        pipe.execute()

    def samples(self, rollout_id: str) -> list[KpiSample]:
        raw = cast(list[str], self.redis.lrange(self.keys.samples(rollout_id), 0, -1))
        return [KpiSample.model_validate_json(item) for item in raw]

    # App Home ----------------------------------------------------------------------------

    def home_opened(self, user: str, at: float) -> None:
        self.redis.zadd(self.keys.home_viewers(), {user: at})

    def home_viewers(self, since: float) -> list[str]:
        """Who opened their Home tab at `since` or later (older entries are dropped)."""
        key = self.keys.home_viewers()
        stale = cast(list[str], self.redis.zrangebyscore(key, "-inf", f"({since}"))
        if stale:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zrem(key, *stale)
            pipe.hdel(self.keys.home_shown(), *stale)
            pipe.hdel(self.keys.home_page(), *stale)
            pipe.execute()
        return cast(list[str], self.redis.zrangebyscore(key, since, "+inf"))

    def claim_home_shown(self, user: str, fingerprint: str) -> bool:
        """True when `user`'s Home did not show `fingerprint` yet: now it is theirs to publish."""
        return bool(self._swap_home_shown(keys=[self.keys.home_shown()], args=[user, fingerprint]))

    def forget_home_shown(self, user: str) -> None:
        """A publish failed: the next refresh publishes again."""
        self.redis.hdel(self.keys.home_shown(), user)

    def home_page(self, user: str) -> int:
        value = cast(str | None, self.redis.hget(self.keys.home_page(), user))
        return int(value) if value and value.isdigit() else 0

    def set_home_page(self, user: str, page: int) -> None:
        self.redis.hset(self.keys.home_page(), user, str(page))

    # Done exactly once (Slack retries, double clicks, replicas) -------------------------

    # The deploy queue --------------------------------------------------------------------

    def enqueue(self, entry: QueuedDeploy) -> QueuedDeploy | None:
        """Take a place in `entry.pipeline`'s queue; the place the person already holds there
        (nothing changed) when they have one."""
        keys = [
            self.keys.queue(entry.pipeline),
            self.keys.queue_entries(entry.pipeline),
            self.keys.queues(),
        ]
        args = [entry.requested_by, repr(entry.queued_at), entry.model_dump_json(), entry.pipeline]
        held = self._enqueue(keys=keys, args=args)
        return QueuedDeploy.model_validate_json(held) if held else None

    def _queue_keys(self, pipeline: str) -> list[str]:
        return [
            self.keys.queue(pipeline),
            self.keys.queue_entries(pipeline),
            self.keys.queues(),
            self.keys.queue_starting(pipeline),
            self.keys.queue_leases(pipeline),
        ]

    def take_queued(
        self, pipeline: str, *, user: str = "", entry_id: str = "", lease_until: float | None = None
    ) -> QueuedDeploy | None:
        """Take the first entry out of the queue (or `user`'s, if it is still `entry_id`):
        atomically, so exactly one caller gets it. With `lease_until` it is kept as starting
        until `finish_starting`; a taker that dies before is found by `reclaim_starting`."""
        lease = "" if lease_until is None else repr(lease_until)
        taken = self._take_queued(
            keys=self._queue_keys(pipeline), args=[entry_id, user, pipeline, lease]
        )
        return QueuedDeploy.model_validate_json(taken) if taken else None

    def finish_starting(self, entry: QueuedDeploy) -> None:
        keys = [
            self.keys.queue_starting(entry.pipeline),
            self.keys.queue_leases(entry.pipeline),
            self.keys.queue(entry.pipeline),
            self.keys.queues(),
        ]
        self._finish_starting(keys=keys, args=[entry.requested_by, entry.pipeline])

    def reclaim_starting(self, pipeline: str, now: float, lease_until: float) -> list[QueuedDeploy]:
        """Starting entries whose taker's lease ended before `now`, leased again to the caller."""
        keys = [self.keys.queue_starting(pipeline), self.keys.queue_leases(pipeline)]
        found = cast(
            list[str], self._reclaim_starting(keys=keys, args=[repr(now), repr(lease_until)])
        )
        return [QueuedDeploy.model_validate_json(raw) for raw in found]

    def requeue(self, entry: QueuedDeploy) -> None:
        """Put a taken entry back in its old place (it could not start after all)."""
        self.enqueue(entry)

    def queue(self, pipeline: str) -> list[QueuedDeploy]:
        """The pipeline's queue, first first."""
        pipe = self.redis.pipeline()
        pipe.zrange(self.keys.queue(pipeline), 0, -1)
        pipe.hgetall(self.keys.queue_entries(pipeline))
        order, entries = cast(tuple[list[str], dict[str, str]], tuple(pipe.execute()))
        return [QueuedDeploy.model_validate_json(entries[u]) for u in order if u in entries]

    def queued_pipelines(self) -> list[str]:
        return sorted(cast(set[str], self.redis.smembers(self.keys.queues())))

    def claim_once(self, kind: Once, subject: str, holder: str = _PENDING) -> bool:
        """True for the first claim of `subject` across every replica, for the kind's TTL."""
        key = self.keys.seen(kind, subject)
        return bool(self.redis.set(key, holder, nx=True, px=int(kind.ttl_seconds * 1000)))

    def claim_once_reading(self, kind: Once, subject: str, pipeline: str) -> FirstClaim:
        """`claim_once` and, for the first claim, `pipeline_snapshot(pipeline)`: one round
        trip for what every /deploy and /rollback ack reads first."""
        claimed, value = cast(
            list[Any],
            self._claim_with_snapshot(
                keys=[self.keys.seen(kind, subject), self.keys.pipeline(pipeline)],
                args=[_PENDING, int(kind.ttl_seconds * 1000), self.keys.rollout("")],
            ),
        )
        if not claimed:
            return FirstClaim(False, _answer_in(value), None)
        return FirstClaim(True, None, _snapshot(pipeline, value))

    def once_holder(self, kind: Once, subject: str) -> str | None:
        return cast(str | None, self.redis.get(self.keys.seen(kind, subject)))

    def release_once(self, kind: Once, subject: str) -> None:
        """The first claim broke before it was done: let a later one try again."""
        self.redis.delete(self.keys.seen(kind, subject))

    def record_answer(
        self, kind: Once, request_id: str, answer: str, audit: Sequence[AuditRecord] = ()
    ) -> None:
        """Keep what the first delivery was told, for the redeliveries of the same request;
        with `audit`, its entries are appended first, in the same round trip."""
        key = self.keys.seen(kind, request_id)
        if not audit:
            self.redis.set(key, "=" + answer, xx=True, keepttl=True)
            return
        args: list[str | int] = ["=" + answer, len(audit)]
        for record in audit:
            entry = record.args()
            args += [len(entry), *entry]
        self._answer_with_audit(keys=[key, self.keys.audit()], args=args)
        for record in audit:
            self.log_audit(record)

    def first_answer(self, kind: Once, request_id: str) -> str | None:
        """The first delivery's answer; None while it is still being handled."""
        return _answer_in(self.once_holder(kind, request_id))

    # Audit stream ------------------------------------------------------------------------

    def audit_record(
        self,
        *,
        actor: str,
        action: str,
        pipeline: str = "",
        outcome: str = "",
        detail: str = "",
        rollout: str = "",
        command: str = "",
        max_age_days: float | None = None,
    ) -> AuditRecord:
        """An audit entry stamped now, to append with `audit` or `record_answer`."""
        now = self.clock.now()
        if max_age_days is None:
            max_age_days = self.audit_max_age_days
        entry = AuditEntry(
            at=now,
            actor=actor,
            action=action,
            pipeline=pipeline,
            outcome=outcome,
            detail=detail[:2000],
            rollout=rollout,
            command=command[:500],
        )
        return AuditRecord(entry, min_id=max(int((now - max_age_days * 86400) * 1000), 0))

    def audit(
        self,
        *,
        actor: str,
        action: str,
        pipeline: str = "",
        outcome: str = "",
        detail: str = "",
        rollout: str = "",
        command: str = "",
        max_age_days: float | None = None,
    ) -> str:
        """Append to the audit stream; entries older than `max_age_days` are trimmed by age."""
        record = self.audit_record(
            actor=actor,
            action=action,
            pipeline=pipeline,
            outcome=outcome,
            detail=detail,
            rollout=rollout,
            command=command,
            max_age_days=max_age_days,
        )
        return self.append_audit(record)

    def append_audit(self, record: AuditRecord) -> str:
        """Append one entry made by `audit_record`; returns its stream id."""
        entry_id = self._audit_append(keys=[self.keys.audit()], args=record.args())
        self.log_audit(record)
        return cast(str, entry_id)

    def log_audit(self, record: AuditRecord) -> None:
        """The log line of an entry written to the stream: `append_audit` and `record_answer`
        log theirs, `open_rollout`'s caller logs the rollout's acceptance."""
        entry = record.entry
        logger.log(
            # A refusal is logged once, at INFO, where it is answered (handlers/errors.py).
            logging.DEBUG if entry.outcome == "refused" else logging.INFO,
            "audit actor=%s action=%s pipeline=%s outcome=%s rollout=%s detail=%s",
            entry.actor,
            entry.action,
            entry.pipeline,
            entry.outcome,
            entry.rollout,
            entry.detail,
        )

    def audit_entries(
        self, *, pipeline: str | None = None, limit: int = 50, since: float | None = None
    ) -> list[AuditEntry]:
        """Newest first; filtered by pipeline when given."""
        entries: list[AuditEntry] = []
        max_id = "+"
        min_id = "-" if since is None else str(int(since * 1000))
        while len(entries) < limit:
            batch = cast(
                list[tuple[str, dict[str, str]]],
                self.redis.xrevrange(self.keys.audit(), max=max_id, min=min_id, count=500),
            )
            if not batch:
                break
            for entry_id, fields in batch:
                if pipeline is None or fields.get("pipeline") == pipeline:
                    entries.append(AuditEntry(id=entry_id, **fields))  # type: ignore[arg-type]
                    if len(entries) >= limit:
                        break
            last_id = batch[-1][0]
            ms, seq = (int(part) for part in last_id.split("-"))
            max_id = f"{ms}-{seq - 1}" if seq > 0 else f"{ms - 1}"
            if len(batch) < 500:
                break
        return entries
