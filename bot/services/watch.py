"""The watch: KPI polls after a rollout goes live, and what happens on a breach.

Every replica schedules every watch (APScheduler jobs rebuilt from Redis each second), and all
fire at the same instants: `live_at + n * interval`. Before polling, a replica claims poll slot
n with SET NX, so each poll runs exactly once whichever replicas are alive; when one dies,
another takes the next slot. Streaks and samples live in Redis, so a restart loses nothing.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.interval import IntervalTrigger

from bot import metrics
from bot.domain.config import Kpi, Pipeline
from bot.domain.errors import ImmuneError
from bot.domain.incidents import Incident, KpiSample
from bot.domain.judging import Decision, compare, compare_averages, compare_counters
from bot.domain.kpis import Reading, Verdict, counter_query, judge, kpi_query, next_streak
from bot.domain.models import (
    Provenance,
    Rollout,
    RolloutKind,
    RolloutStatus,
    TrafficSplit,
    WatchState,
    new_id,
)
from bot.domain.traffic import step_seconds, watch_seconds
from bot.ports import KpiSource
from bot.services import incidents, traffic
from bot.services.context import Context
from bot.services.deploys import start_rollout
from bot.services.halts import halt_pipeline
from bot.services.outcomes import record_outcome
from bot.services.pinning import image_that_ran
from bot.store.keys import Once

logger = logging.getLogger(__name__)

WATCH_JOB_PREFIX = "watch:"
SYNC_INTERVAL_SECONDS = 1.0
CHART_WAIT_SECONDS = 60.0
# One poll's KPI queries share this much of the interval (at most MAX_POLL_BUDGET_SECONDS), so
# a slow Prometheus makes a poll's readings no data, never a poll that runs into the next one.
POLL_BUDGET_SHARE = 0.8
MAX_POLL_BUDGET_SECONDS = 10.0
MIN_READ_SECONDS = 0.05
_DIGITS = re.compile(r"\d+(?:\.\d+)?")


@dataclass(frozen=True)
class PollOutcome:
    slot: int
    samples: list[KpiSample]
    breached: Kpi | None
    finished: bool


def record_watch(
    ctx: Context, rollout: Rollout, pipeline: Pipeline, outcome: str = ""
) -> WatchState:
    """Record a live rollout's watch in Redis, from when it went live, and audit it; every
    replica's sync then schedules it."""
    watch = WatchState(
        rollout_id=rollout.id,
        pipeline=rollout.pipeline,
        started_at=rollout.live_at or ctx.clock.now(),
        interval=pipeline.watch.interval,
        duration=watch_seconds(pipeline, rollout),
        warmup=pipeline.watch.warmup,
    )
    ctx.store.start_watch(watch)
    ctx.audit(
        actor="immune",
        action="watch.start",
        pipeline=rollout.pipeline,
        rollout=rollout.id,
        outcome=outcome,
        detail=f"{len(pipeline.kpis)} KPI(s) every {watch.interval:g}s for {watch.duration:g}s",
    )
    return watch


class Watcher:
    def __init__(
        self, ctx: Context, scheduler: BaseScheduler, sources: Mapping[str, KpiSource]
    ) -> None:
        self.ctx = ctx
        self.scheduler = scheduler
        self.sources = sources  # by name: each KPI is read from its own `source`
        # What each watch already logged (rollout id -> reasons), so that a KPI that cannot be
        # read logs its reason once per watch, not at every poll. Per replica, in memory.
        self._reported: dict[str, set[str]] = {}
        self._reported_lock = threading.Lock()

    # Starting and scheduling -------------------------------------------------------------

    def begin(self, rollout: Rollout, pipeline: Pipeline) -> None:
        """Called when a deploy goes live: record the watch, then schedule it here."""
        self._schedule(record_watch(self.ctx, rollout, pipeline))

    def sync(self) -> None:
        """Make this replica's jobs match the watches in Redis (start-up, and every second)."""
        wanted = self.ctx.store.watches()
        for job in self.scheduler.get_jobs():
            if (
                job.id.startswith(WATCH_JOB_PREFIX)
                and job.id.removeprefix(WATCH_JOB_PREFIX) not in wanted
            ):
                job.remove()
        scheduled = {job.id for job in self.scheduler.get_jobs()}
        for rollout_id, watch in wanted.items():
            if WATCH_JOB_PREFIX + rollout_id not in scheduled:
                self._schedule(watch)
        metrics.WATCHES_ACTIVE.set(len(wanted))
        with self._reported_lock:  # watches that ended on another replica
            for rollout_id in [r for r in self._reported if r not in wanted]:
                del self._reported[rollout_id]

    def _schedule(self, watch: WatchState) -> None:
        first = datetime.fromtimestamp(watch.started_at + watch.interval, tz=UTC)
        now = self.ctx.clock.now()
        if now > watch.started_at + watch.interval:
            # Rebuilt after a restart: resume at the next slot boundary, keeping the phase.
            next_slot = watch.slot_at(now) + 1
            first = datetime.fromtimestamp(watch.started_at + next_slot * watch.interval, tz=UTC)
            if watch.slot_at(now) >= watch.last_slot:
                first = datetime.fromtimestamp(now + 0.05, tz=UTC)
        self.scheduler.add_job(
            self.poll,
            IntervalTrigger(seconds=watch.interval, start_date=first, timezone=UTC),
            args=[watch.rollout_id],
            id=WATCH_JOB_PREFIX + watch.rollout_id,
            replace_existing=True,
            coalesce=True,  # several missed polls make one late poll, not a burst
            max_instances=1,  # an overrunning poll never piles up behind itself
            misfire_grace_time=max(1, int(watch.interval * 10)),  # late, not silently dropped
        )

    def _unschedule(self, rollout_id: str) -> None:
        with contextlib.suppress(JobLookupError):
            self.scheduler.remove_job(WATCH_JOB_PREFIX + rollout_id)

    def end(self, rollout_id: str) -> None:
        """Forget a watch everywhere (other replicas drop their job at their next sync)."""
        self.ctx.store.end_watch(rollout_id)
        self._unschedule(rollout_id)
        with self._reported_lock:
            self._reported.pop(rollout_id, None)

    def _log_once(
        self, rollout_id: str, reason: str, level: int, message: str, *args: object
    ) -> None:
        """Log `message` the first time this watch meets `reason` (on this replica)."""
        with self._reported_lock:
            seen = self._reported.setdefault(rollout_id, set())
            if reason in seen:
                return
            seen.add(reason)
        logger.log(level, "%s (logged once per watch)", message % args)

    # Polling -----------------------------------------------------------------------------

    def poll(self, rollout_id: str) -> PollOutcome | None:
        """One scheduled poll; returns None when another replica has this slot."""
        store = self.ctx.store
        watch = store.watch(rollout_id)
        if watch is None:
            self._unschedule(rollout_id)
            return None
        now = self.ctx.clock.now()
        slot = min(watch.slot_at(now), watch.last_slot)
        if slot < 1:
            return None
        # Kept well past the watch's end, so a late replica never polls the slot again.
        claim_ttl = max(watch.duration, watch.interval) * 2 + 60
        if not store.claim_poll_slot(rollout_id, slot, self.ctx.instance_id, claim_ttl):
            return None
        rollout = store.rollout(rollout_id)
        pipeline = self.ctx.config.pipelines.get(watch.pipeline)
        if rollout is None or pipeline is None or rollout.status is not RolloutStatus.live:
            self.end(rollout_id)
            return None
        if self._engine_away(watch, pipeline, slot):
            return PollOutcome(slot, [], None, False)
        polling_since = time.monotonic()
        metrics.POLL_LATENESS_SECONDS.labels(pipeline=watch.pipeline).observe(
            max(0.0, now - (watch.started_at + slot * watch.interval))
        )
        try:
            return self._poll(watch, rollout, pipeline, slot)
        finally:
            took = time.monotonic() - polling_since
            if took > watch.interval and store.watch(rollout_id) is not None:
                # APScheduler (max_instances=1, coalesce) skips the slots this poll overran.
                metrics.POLL_OVERRUNS.labels(pipeline=watch.pipeline).inc()
                self._log_once(
                    rollout_id,
                    "overrun",
                    logging.WARNING,
                    "watch of %s (rollout %s): poll %d took %.2fs, longer than the %gs "
                    "interval; the slots it overran are skipped, not queued",
                    watch.pipeline,
                    rollout_id,
                    slot,
                    took,
                    watch.interval,
                )

    def _engine_away(self, watch: WatchState, pipeline: Pipeline, slot: int) -> bool:
        """Whether this poll is paused: the pipeline's engine does not answer (or is back but
        not reconciled yet), so what the KPIs say is the outage's doing, not the version's.
        A paused poll neither counts nor resets a streak, and never ends the watch."""
        since = self.ctx.engines.down_since(pipeline.target)
        if since is None:
            return False
        metrics.POLLS_PAUSED.labels(pipeline=watch.pipeline).inc()
        self._log_once(
            watch.rollout_id,
            f"engine-away\0{since!r}",
            logging.WARNING,
            "watch of %s (rollout %s): the %s engine does not answer; polls paused from slot %d",
            watch.pipeline,
            watch.rollout_id,
            pipeline.target,
            slot,
        )
        return True

    def _engine_answers(self, pipeline: Pipeline) -> bool:
        """Asked when a KPI has no data: is it because the engine just went away?"""
        if self.ctx.target(pipeline).health().get("ok"):
            return True
        self.ctx.engines.found_down(pipeline.target, self.ctx.clock.now())
        return False

    def _poll(
        self, watch: WatchState, rollout: Rollout, pipeline: Pipeline, slot: int
    ) -> PollOutcome:
        if pipeline.traffic is not None:
            # A proxy that restarted lost its routes: put them back before judging.
            traffic.restore_routes(self.ctx, [watch.pipeline])
        polled = self._poll_kpis(watch, pipeline, slot, rollout)
        if polled is None:
            return PollOutcome(slot, [], None, False)  # the engine went away: paused
        samples, breached = polled
        self._show_judgements(rollout, pipeline, samples)
        if breached is not None:
            self.breach(rollout, pipeline, breached)
            return PollOutcome(slot, samples, breached, True)
        waiting = [s.kpi for s in samples if s.verdict == Verdict.not_enough_data.value]
        if slot >= watch.last_slot:
            if traffic.held_short(rollout, pipeline):
                if waiting:
                    # The watch is over and a step could not be judged: `inconclusive`.
                    kpi = next(k for k in pipeline.kpis if k.name == waiting[0])
                    self.breach(rollout, pipeline, kpi, inconclusive=True)
                    return PollOutcome(slot, samples, kpi, True)
                traffic.advance(self.ctx, rollout, pipeline, ready=True, to_the_end=True)
            self.finish_good(rollout, watch)
            return PollOutcome(slot, samples, None, True)
        if pipeline.traffic is not None:
            if waiting and traffic.step_over(self.ctx, rollout, pipeline):
                if traffic.hold(self.ctx, rollout, pipeline, waiting):
                    decided = self._inconclusive(rollout, pipeline, waiting)
                    if decided is not None:
                        return PollOutcome(slot, samples, decided, True)
            else:
                traffic.advance(self.ctx, rollout, pipeline, ready=not waiting)
        return PollOutcome(slot, samples, None, False)

    def _inconclusive(self, rollout: Rollout, pipeline: Pipeline, waiting: list[str]) -> Kpi | None:
        """Nobody answered a held step in time: `traffic.inconclusive` decides."""
        assert pipeline.traffic is not None
        policy = pipeline.traffic.inconclusive
        if policy == "rollback":
            kpi = next(k for k in pipeline.kpis if k.name == waiting[0])
            self.breach(rollout, pipeline, kpi, inconclusive=True)
            return kpi
        if policy == "promote":
            current = self.ctx.store.rollout(rollout.id) or rollout
            traffic.advance(self.ctx, current, pipeline, ready=True)
        return None  # hold: it waits for a person, or for the watch's end

    def _show_judgements(
        self, rollout: Rollout, pipeline: Pipeline, samples: list[KpiSample]
    ) -> None:
        compared = {k.name for k in pipeline.kpis if k.judge == "compare"}
        latest = {s.kpi: s for s in samples if s.kpi in compared and s.verdict != "warmup"}
        # Rewritten when a verdict changes, or while samples are still being counted (a few
        # polls at most), not at every poll: each rewrite is a Slack message update.
        if all(
            rollout.judged.get(name) == s.verdict and s.verdict != Verdict.not_enough_data.value
            for name, s in latest.items()
        ):
            return

        def record(r: Rollout) -> None:
            r.judgements.update({name: s.detail for name, s in latest.items()})
            r.judged.update({name: s.verdict for name, s in latest.items()})

        self.ctx.runner.change(rollout.id, record, wait=False)

    def _poll_kpis(
        self, watch: WatchState, pipeline: Pipeline, slot: int, rollout: Rollout
    ) -> tuple[list[KpiSample], Kpi | None] | None:
        """Query and judge every KPI; two Redis round trips whatever the number of KPIs.

        None, with nothing recorded, when a KPI has no data because the engine just went away
        (found before the engine job's next ping): the poll is paused, not judged.
        """
        store = self.ctx.store
        budget = min(MAX_POLL_BUDGET_SECONDS, watch.interval * POLL_BUDGET_SHARE)
        deadline = time.monotonic() + budget
        streaks = store.streaks(watch.rollout_id)
        samples: list[KpiSample] = []
        breached: Kpi | None = None
        step = rollout.traffic.step if rollout.traffic is not None else 0
        earlier: list[KpiSample] | None = None  # this step's samples so far, read once
        engine_asked = False
        for kpi in pipeline.kpis:
            started = time.perf_counter()
            query = kpi_query(kpi, pipeline.traffic, rollout.traffic)
            if query is None:
                reading = Reading(None, "no baseline version runs to compare with")
            else:
                reading = self._read_by(kpi, query, deadline, budget)
            metrics.KPI_POLL_SECONDS.labels(pipeline=watch.pipeline).observe(
                time.perf_counter() - started
            )
            if reading.value is None and not engine_asked:
                engine_asked = True
                if not self._engine_answers(pipeline):
                    self._engine_away(watch, pipeline, slot)
                    return None
            verdict = judge(kpi, reading, slot, watch.warmup_until)
            baseline_value: float | None = None
            counts: tuple[float, float, float, float] | None = None
            detail = reading.detail
            if kpi.judge == "compare" and verdict is Verdict.ok:
                if earlier is None:
                    earlier = [s for s in store.samples(watch.rollout_id) if s.step == step]
                verdict, baseline_value, detail, counts = self._compare(
                    kpi,
                    pipeline,
                    rollout,
                    reading,
                    earlier,
                    deadline,
                    budget,
                )
            # Once per watch and reason, from its first judged poll (warm-up polls judge nothing).
            if verdict is not Verdict.warmup and (
                reading.value is None or verdict in (Verdict.no_data, Verdict.ignored)
            ):
                self._log_once(
                    watch.rollout_id,
                    # One reason whatever its numbers (a timeout's seconds, a count of series).
                    f"{kpi.name}\0{_DIGITS.sub('#', detail)}",
                    logging.ERROR if reading.config_error else logging.WARNING,
                    "watch of %s (rollout %s), KPI %s: %s%s; verdict %s",
                    watch.pipeline,
                    watch.rollout_id,
                    kpi.name,
                    "the query is wrong: " if reading.config_error else "",
                    detail,
                    verdict.value,
                )
            metrics.KPI_POLLS.labels(
                pipeline=watch.pipeline, kpi=kpi.name, verdict=verdict.value
            ).inc()
            samples.append(
                KpiSample(
                    at=self.ctx.clock.now(),
                    slot=slot,
                    kpi=kpi.name,
                    value=reading.value,
                    verdict=verdict.value,
                    detail=detail,
                    baseline=baseline_value,
                    step=step,
                    counts=counts,
                )
            )
            streaks[kpi.name] = next_streak(streaks.get(kpi.name, 0), verdict)
            if streaks[kpi.name] >= kpi.for_polls and breached is None:
                breached = kpi
        store.record_poll(
            watch.rollout_id, slot, {kpi.name: streaks[kpi.name] for kpi in pipeline.kpis}, samples
        )
        return samples, breached

    def _compare(
        self,
        kpi: Kpi,
        pipeline: Pipeline,
        rollout: Rollout,
        reading: Reading,
        earlier: list[KpiSample],
        deadline: float,
        budget: float,
    ) -> tuple[Verdict, float | None, str, tuple[float, float, float, float] | None]:
        """judge: compare: this poll's value and the baseline's, with the step's earlier ones;
        the built-in error_rate on the step's counts (the slots' counters, read here)."""
        query = kpi_query(kpi, pipeline.traffic, rollout.traffic, baseline=True)
        if query is None:
            # A first deploy, or the baseline retired: nothing to compare with (not a breach).
            return Verdict.not_enough_data, None, f"{kpi.name}: no baseline version runs", None
        base = self._read_by(kpi, query, deadline, budget)
        if base.value is None:
            verdict = Verdict.no_data if kpi.no_data == "breach" else Verdict.ignored
            return verdict, None, f"{kpi.name}: the baseline has no data ({base.detail})", None
        assert reading.value is not None
        mine = [s for s in earlier if s.kpi == kpi.name]
        # How far into the step this look is: each look is held to its place's level, so a
        # step looked at every poll is no likelier to roll back a healthy version than one
        # looked at once (bot.domain.judging.look_alpha).
        fraction = (len(mine) + 1) * pipeline.watch.interval / step_seconds(pipeline, rollout)
        counts: tuple[float, float, float, float] | None = None
        if kpi.builtin is not None:
            # Both built-ins are judged with the slots' response counters, read here: the
            # error rate on the step's counts, the latency over the same responses' span.
            read = self._counters(pipeline, rollout, kpi, deadline, budget)
            if isinstance(read, str):
                verdict = Verdict.no_data if kpi.no_data == "breach" else Verdict.ignored
                return verdict, None, f"{kpi.name}: {read}", None
            counts = read
            counted = [s for s in mine if s.counts is not None]
        if kpi.builtin == "error_rate":
            assert counts is not None
            origin = counted[0].counts if counted else None
            # The time the counts span says how long a step needs at this traffic.
            seconds = self.ctx.clock.now() - counted[0].at if counted else None
            comparison = compare_counters(kpi, origin, counts, len(counted), seconds, fraction)
        elif kpi.builtin == "latency_average":
            assert counts is not None
            comparison = compare_averages(
                kpi,
                [*(_averaged(s) for s in counted), _averaged_now(reading, base, counts)],
                fraction,
            )
        else:
            pairs = [
                (s.value, s.baseline)
                for s in mine
                if s.value is not None and s.baseline is not None
            ]
            news = [value for value, _ in pairs if value is not None] + [reading.value]
            bases = [value for _, value in pairs if value is not None] + [base.value]
            comparison = compare(kpi, news, bases, fraction)
        detail = comparison.explain(kpi)
        if kpi.breaches(base.value):
            detail += f"; the baseline itself is beyond {kpi.tolerance_text()} ({base.value:.4g})"
        verdict = {
            Decision.worse: Verdict.breach,
            Decision.no_worse: Verdict.ok,
            Decision.not_enough_data: Verdict.not_enough_data,
        }[comparison.decision]
        return verdict, base.value, detail, counts

    def _counters(
        self, pipeline: Pipeline, rollout: Rollout, kpi: Kpi, deadline: float, budget: float
    ) -> tuple[float, float, float, float] | str:
        """Both slots' response counters now (failed, served each), or why there are none."""
        values: list[float] = []
        for baseline in (False, True):
            for name in ("failed", "responses"):
                query = counter_query(name, pipeline.traffic, rollout.traffic, baseline=baseline)
                if query is None:
                    return "no slot to count responses on"
                answer = self._read_by(kpi, query, deadline, budget)
                if answer.value is None:
                    side = "the baseline's" if baseline else "the new version's"
                    return f"{side} {name} counter has no data ({answer.detail})"
                values.append(answer.value)
        return values[0], values[1], values[2], values[3]

    def _read_by(self, kpi: Kpi, query: str, deadline: float, budget: float) -> Reading:
        """One query of a poll, given what is left of the poll's budget: every read of a poll
        (a KPI, its baseline, the counters) shares it, so a slow Prometheus cannot stretch a
        poll past its interval however many queries a compare needs."""
        left = deadline - time.monotonic()
        if left < MIN_READ_SECONDS:
            return Reading(
                None, f"no time left in this poll (its queries may take {budget:g}s in all)"
            )
        return self.sources[kpi.source].read(query, left)

    def samples(self, rollout_id: str) -> list[KpiSample]:
        return self.ctx.store.samples(rollout_id)

    # Endings -----------------------------------------------------------------------------

    def finish_good(self, rollout: Rollout, watch: WatchState) -> None:
        """The watch ended without a breach: this version is the pipeline's last good one."""
        store = self.ctx.store
        state = store.pipeline(rollout.pipeline)
        current = store.rollout(rollout.id)
        if current is None or current.status is not RolloutStatus.live:
            self.end(rollout.id)
            return
        # The pipeline's record changes before the rollout's status, so whoever sees `good`
        # finds it the last good version too (as when a rollout goes live).
        serving = state.live_rollout == rollout.id
        if serving:
            store.update_pipeline(
                rollout.pipeline, last_good_version=current.version, last_good_rollout=current.id
            )
        became_good = False

        def good(r: Rollout) -> None:
            nonlocal became_good
            if r.status is RolloutStatus.live:
                r.status = RolloutStatus.good
                r.finished_at = self.ctx.clock.now()
                became_good = True

        updated = self.ctx.runner.change(rollout.id, good)
        self.end(rollout.id)
        if not became_good:
            if serving:  # something else ended it meanwhile: the last good version stays
                store.update_pipeline(
                    rollout.pipeline,
                    last_good_version=state.last_good_version,
                    last_good_rollout=state.last_good_rollout,
                )
            return
        pipeline = self.ctx.config.pipelines.get(rollout.pipeline)
        if pipeline is not None and pipeline.traffic is not None and serving:
            traffic.retire_baseline(self.ctx, updated, pipeline)
        record_outcome(
            store,
            updated,
            "good",
            action="watch.good",
            detail=f"{updated.version} passed its watch; now the last good version",
        )

    def breach(
        self, rollout: Rollout, pipeline: Pipeline, kpi: Kpi, *, inconclusive: bool = False
    ) -> Incident | None:
        """Roll back (or offer to), halt, record the incident, raise the alarm: once."""
        detected_at = self.ctx.clock.now()
        claimed = False
        back: TrafficSplit | None = None

        def mark_breached(r: Rollout) -> None:
            nonlocal claimed, back
            claimed, back = False, None  # a WATCH retry reads the record again
            if r.status is RolloutStatus.live:
                r.status = RolloutStatus.rolled_back
                r.finished_at = detected_at
                # Behind a proxy, where the requests go back is recorded with the claim: one
                # write, then the proxy is told, before anything else.
                back = traffic.all_back(self.ctx, r.traffic, pipeline)
                if back is not None:
                    r.traffic = back
                r.notes.append(
                    f"KPI {kpi.name} could not be judged (not enough data) by the watch's end: "
                    "inconclusive, rolled back"
                    if inconclusive
                    else f"KPI {kpi.name} breached: {kpi.tolerance_text()}"
                )
                claimed = True

        # The status change is the claim: a second detection (another replica, a later poll)
        # finds the rollout no longer live and does nothing.
        if pipeline.auto_rollback:
            # The message follows off this path, once the requests are back (wait=False,
            # show=False, then show): the cure waits neither for Slack nor for a render.
            self.ctx.runner.change(rollout.id, mark_breached, wait=False, show=False)
        else:
            # The bad version stays live until someone confirms; the breach is claimed once,
            # and only while the rollout is still the live one being watched.
            current = self.ctx.store.rollout(rollout.id)
            claimed = (
                current is not None
                and current.status is RolloutStatus.live
                and self.ctx.store.claim_once(Once.breach, rollout.id)
            )
        # Behind a proxy the baseline still runs: every request goes back to it first.
        sent_back = (
            back
            if claimed
            and back is not None
            and traffic.send_back(self.ctx, rollout.pipeline, pipeline, back)
            else None
        )
        if pipeline.auto_rollback:
            self.ctx.runner.show(rollout.id)
        self.end(rollout.id)
        if not claimed:
            return None
        traffic.close_question(self.ctx, rollout, pipeline)  # a held step's question, if any
        metrics.BREACHES.labels(pipeline=rollout.pipeline, kpi=kpi.name).inc()
        state = self.ctx.store.pipeline(rollout.pipeline)
        incident = Incident(
            id=new_id("inc"),
            pipeline=rollout.pipeline,
            channel=pipeline.channel,
            rollout_id=rollout.id,
            bad_version=rollout.version,
            restored_version=state.last_good_version or None,
            kpi=kpi.name,
            query=kpi_query(kpi, pipeline.traffic, rollout.traffic) or kpi.query,
            tolerance=kpi.tolerance_text(),
            judgement=self._judgement(rollout.id, kpi),
            kpi_max=kpi.max,
            kpi_min=kpi.min,
            for_polls=kpi.for_polls,
            auto_rollback=pipeline.auto_rollback,
            samples=[s for s in self.samples(rollout.id) if s.kpi == kpi.name],
            opened_at=detected_at,
            live_at=rollout.live_at,
            bad_provenance=rollout.provenance,
            good_provenance=self._provenance_of(state.last_good_rollout),
        )
        halt_pipeline(
            self.ctx, rollout.pipeline, by="immune", reason="KPI breach", incident=incident.id
        )
        if sent_back is not None and rollout.traffic is not None:
            share = rollout.traffic.percent
            step = rollout.traffic.step + 1
            steps = len(pipeline.traffic.plan) if pipeline.traffic else 1
            incident.actions.append(
                f"sent all traffic back to `{sent_back.baseline_version}`; "
                f"`{rollout.version}` had {share}% of requests (step {step} of {steps})"
            )
        incident.actions.append(f"halted `{rollout.pipeline}`")
        if pipeline.auto_rollback:
            incident.rollback_rollout_id = self._roll_back(incident, pipeline)
        else:
            incident.actions.append(
                "auto-rollback is off: waiting for someone to confirm the rollback"
            )
        # After the rollback has started: the chart's context must not delay the cure.
        incident.history = self._history(
            incident.query, kpi, pipeline, rollout.live_at or detected_at, detected_at
        )
        incidents.create_incident(self.ctx.store, incident)
        self.ctx.runner.change(rollout.id, lambda r: setattr(r, "incident_id", incident.id))
        self.ctx.audit(
            actor="immune",
            action="breach",
            pipeline=rollout.pipeline,
            rollout=rollout.id,
            outcome="halted",
            detail=f"{kpi.name} beyond {kpi.tolerance_text()} for {kpi.for_polls} poll(s); incident {incident.id}",
        )
        try:
            alert_ts = self.ctx.notifier.incident_opened(incident)
        except Exception:
            logger.exception("could not post the breach alert of incident %s", incident.id)
            return incident
        if alert_ts:
            # The alert's thread is where answers arrive: link it to the incident.
            incident = incidents.record_alert(self.ctx.store, incident.id, alert_ts)
            self._post_chart_after_rollback(incident)
        return incident

    def _judgement(self, rollout_id: str, kpi: Kpi) -> str:
        if kpi.judge != "compare":
            return ""
        latest = [s for s in self.samples(rollout_id) if s.kpi == kpi.name]
        return latest[-1].detail if latest else ""

    def _post_chart_after_rollback(self, incident: Incident) -> None:
        """Render the chart once the rollback is over: its CPU must not slow the rollback."""

        def post() -> None:
            # Redis failing while it waits is one more reason the chart is not posted, said
            # in the log like the others: a thread of its own must not die with a traceback.
            try:
                deadline = time.monotonic() + CHART_WAIT_SECONDS
                while incident.rollback_rollout_id and time.monotonic() < deadline:
                    rollback = self.ctx.store.rollout(incident.rollback_rollout_id)
                    if rollback is None or not rollback.status.in_flight_states:
                        break
                    time.sleep(0.2)
                self.ctx.notifier.incident_chart(incident)
            except Exception:
                logger.exception("could not post the chart of incident %s", incident.id)

        threading.Thread(target=post, name=f"chart-{incident.id}", daemon=True).start()

    def _history(
        self, query: str, kpi: Kpi, pipeline: Pipeline, live_at: float, until: float
    ) -> list[tuple[float, float]]:
        before = max(60.0, 10 * pipeline.watch.interval)
        step = max(1.0, pipeline.watch.interval / 2)
        try:
            return self.sources[kpi.source].read_range(
                query, live_at - before, until, step, timeout=2.0
            )
        except Exception:
            logger.exception("could not read the history of KPI %s", kpi.name)
            return []

    def _provenance_of(self, rollout_id: str) -> Provenance | None:
        good = self.ctx.store.rollout(rollout_id) if rollout_id else None
        return good.provenance if good is not None else None

    def _roll_back(self, incident: Incident, pipeline: Pipeline) -> str | None:
        if not incident.restored_version:
            incident.actions.append(
                "no last good version to roll back to: the bad version still runs"
            )
            return None
        try:
            rollout = start_rollout(
                self.ctx,
                incident.pipeline,
                pipeline,
                image_that_ran(
                    self.ctx.store, incident.pipeline, pipeline, incident.restored_version
                ),
                kind=RolloutKind.auto_rollback,
                actor="immune",
                reason=f"KPI {incident.kpi} breach",
            )
        except ImmuneError as exc:
            incident.actions.append(f"automatic rollback not started: {exc.message}")
            logger.error("incident %s: rollback not started: %s", incident.id, exc.message)
            return None
        metrics.ROLLBACKS.labels(pipeline=incident.pipeline, trigger="breach").inc()
        incident.actions.append(f"rolling back to `{incident.restored_version}` ({rollout.id})")
        return rollout.id


def _averaged(sample: KpiSample) -> tuple[float, float, float, float]:
    """An earlier poll of the built-in latency_average: both values and both slots' responses."""
    assert sample.counts is not None and sample.value is not None and sample.baseline is not None
    return sample.value, sample.counts[1], sample.baseline, sample.counts[3]


def _averaged_now(
    reading: Reading, base: Reading, counts: tuple[float, float, float, float]
) -> tuple[float, float, float, float]:
    assert reading.value is not None and base.value is not None
    return reading.value, counts[1], base.value, counts[3]
