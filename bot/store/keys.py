"""Every Redis key the bot uses, in one place, under the install's prefix."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

PIPELINE_KEY_TEMPLATE = "{prefix}:pipeline:{pipeline}"  # hash: PipelineState
ROLLOUT_LOCK_KEY_TEMPLATE = "{prefix}:lock:rollout:{pipeline}"  # string: rollout id, PX ttl
ROLLOUT_RUNNER_KEY_TEMPLATE = "{prefix}:runner:{rollout}"  # string: instance id, PX ttl
ROLLOUT_KEY_TEMPLATE = "{prefix}:rollout:{rollout}"  # string: Rollout JSON
PIPELINE_ROLLOUTS_KEY_TEMPLATE = "{prefix}:pipeline:{pipeline}:rollouts"  # zset id -> created
SAMPLES_KEY_TEMPLATE = "{prefix}:rollout:{rollout}:samples"  # list of KpiSample JSON
WATCHES_KEY_TEMPLATE = "{prefix}:watches"  # hash rollout id -> WatchState JSON
WATCH_KEY_TEMPLATE = "{prefix}:watch:{rollout}"  # hash: streaks and last poll of one watch
POLL_SLOT_KEY_TEMPLATE = "{prefix}:poll:{rollout}:{slot}"  # string NX: who runs poll #slot
INCIDENT_KEY_TEMPLATE = "{prefix}:incident:{incident}"  # string: Incident JSON
PIPELINE_INCIDENTS_KEY_TEMPLATE = "{prefix}:pipeline:{pipeline}:incidents"  # zset
INCIDENT_BY_THREAD_KEY_TEMPLATE = "{prefix}:incident-thread:{channel}:{ts}"  # string id
AUDIT_STREAM_KEY_TEMPLATE = "{prefix}:audit"  # stream
SEEN_KEY_TEMPLATE = "{prefix}:seen:{kind}:{request}"  # string NX: request dedupe
INSTANCE_KEY_TEMPLATE = "{prefix}:instance:{instance}"  # string, PX ttl: replica heartbeat
HOME_VIEWERS_KEY_TEMPLATE = "{prefix}:home:viewers"  # zset user -> when they last opened Home
HOME_SHOWN_KEY_TEMPLATE = "{prefix}:home:shown"  # hash user -> fingerprint of the view shown
HOME_PAGE_KEY_TEMPLATE = "{prefix}:home:page"  # hash user -> the page of pipelines they chose
QUEUE_KEY_TEMPLATE = "{prefix}:queue:{pipeline}"  # zset user -> when they queued (the order)
QUEUE_ENTRIES_KEY_TEMPLATE = "{prefix}:queue:{pipeline}:entries"  # hash user -> QueuedDeploy
QUEUES_KEY_TEMPLATE = "{prefix}:queues"  # set of pipelines whose queue may hold someone
# Entries taken to start, until their start is settled: hash user -> QueuedDeploy, and
# zset user -> the moment the taker's lease ends (a taker that died is recovered after it).
QUEUE_STARTING_KEY_TEMPLATE = "{prefix}:queue:{pipeline}:starting"
QUEUE_LEASES_KEY_TEMPLATE = "{prefix}:queue:{pipeline}:leases"
# string: when the replicas first found this engine (a target's name) unreachable; deleted by
# the replica that handled its return (Once.engine_back), so each outage is told once each way.
ENGINE_DOWN_KEY_TEMPLATE = "{prefix}:engine-down:{engine}"


@dataclass(frozen=True)
class OnceKind:
    """A kind of thing done exactly once across replicas, and how long the claim is kept."""

    name: str
    ttl_seconds: float


class Once(Enum):
    """Every "exactly once" claim the bot makes (`SEEN_KEY_TEMPLATE`), with its TTL.

    A TTL outlives every redelivery that could follow: Slack retries within minutes, and
    people press a button again within days at most.
    """

    command = OnceKind("command", 3600)  # a slash command, by trigger_id
    action = OnceKind("action", 3600)  # a button press, by trigger_id and action_ts
    five_whys_reply = OnceKind("five-whys", 600)  # a thread answer, by its text's hash
    breach = OnceKind("breach", 86400)  # a breach with auto_rollback off, by rollout
    rollback_confirm = OnceKind("rollback-confirm", 7 * 86400)  # by incident
    routes_restored = OnceKind("routes-restored", 30)  # a proxy restart told, by pipeline
    canary_decision = OnceKind("canary-decision", 7 * 86400)  # a held step, by rollout:step
    # An engine's return handled (told, reconciled), by engine:outage start; a replica that
    # died half-way is relieved when this expires.
    engine_back = OnceKind("engine-back", 300)

    @property
    def ttl_seconds(self) -> float:
        return self.value.ttl_seconds


class Keys:
    """Key names for one install (`REDIS_PREFIX`)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def pipeline(self, pipeline: str) -> str:
        return PIPELINE_KEY_TEMPLATE.format(prefix=self.prefix, pipeline=pipeline)

    def rollout_lock(self, pipeline: str) -> str:
        return ROLLOUT_LOCK_KEY_TEMPLATE.format(prefix=self.prefix, pipeline=pipeline)

    def rollout_runner(self, rollout: str) -> str:
        return ROLLOUT_RUNNER_KEY_TEMPLATE.format(prefix=self.prefix, rollout=rollout)

    def rollout(self, rollout: str) -> str:
        return ROLLOUT_KEY_TEMPLATE.format(prefix=self.prefix, rollout=rollout)

    def pipeline_rollouts(self, pipeline: str) -> str:
        return PIPELINE_ROLLOUTS_KEY_TEMPLATE.format(prefix=self.prefix, pipeline=pipeline)

    def samples(self, rollout: str) -> str:
        return SAMPLES_KEY_TEMPLATE.format(prefix=self.prefix, rollout=rollout)

    def watches(self) -> str:
        return WATCHES_KEY_TEMPLATE.format(prefix=self.prefix)

    def watch(self, rollout: str) -> str:
        return WATCH_KEY_TEMPLATE.format(prefix=self.prefix, rollout=rollout)

    def poll_slot(self, rollout: str, slot: int) -> str:
        return POLL_SLOT_KEY_TEMPLATE.format(prefix=self.prefix, rollout=rollout, slot=slot)

    def incident(self, incident: str) -> str:
        return INCIDENT_KEY_TEMPLATE.format(prefix=self.prefix, incident=incident)

    def pipeline_incidents(self, pipeline: str) -> str:
        return PIPELINE_INCIDENTS_KEY_TEMPLATE.format(prefix=self.prefix, pipeline=pipeline)

    def incident_by_thread(self, channel: str, ts: str) -> str:
        return INCIDENT_BY_THREAD_KEY_TEMPLATE.format(prefix=self.prefix, channel=channel, ts=ts)

    def audit(self) -> str:
        return AUDIT_STREAM_KEY_TEMPLATE.format(prefix=self.prefix)

    def seen(self, kind: Once, request: str) -> str:
        return SEEN_KEY_TEMPLATE.format(prefix=self.prefix, kind=kind.value.name, request=request)

    def instance(self, instance: str) -> str:
        return INSTANCE_KEY_TEMPLATE.format(prefix=self.prefix, instance=instance)

    def home_viewers(self) -> str:
        return HOME_VIEWERS_KEY_TEMPLATE.format(prefix=self.prefix)

    def home_shown(self) -> str:
        return HOME_SHOWN_KEY_TEMPLATE.format(prefix=self.prefix)

    def home_page(self) -> str:
        return HOME_PAGE_KEY_TEMPLATE.format(prefix=self.prefix)

    def queue(self, pipeline: str) -> str:
        return QUEUE_KEY_TEMPLATE.format(prefix=self.prefix, pipeline=pipeline)

    def queue_entries(self, pipeline: str) -> str:
        return QUEUE_ENTRIES_KEY_TEMPLATE.format(prefix=self.prefix, pipeline=pipeline)

    def queues(self) -> str:
        return QUEUES_KEY_TEMPLATE.format(prefix=self.prefix)

    def queue_starting(self, pipeline: str) -> str:
        return QUEUE_STARTING_KEY_TEMPLATE.format(prefix=self.prefix, pipeline=pipeline)

    def queue_leases(self, pipeline: str) -> str:
        return QUEUE_LEASES_KEY_TEMPLATE.format(prefix=self.prefix, pipeline=pipeline)

    def engine_down(self, engine: str) -> str:
        return ENGINE_DOWN_KEY_TEMPLATE.format(prefix=self.prefix, engine=engine)
