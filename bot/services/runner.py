"""Running rollouts: the steps after a /deploy or /rollback was accepted.

A rollout runs on a worker thread of the replica that accepted it, under the pipeline's rollout
lock and a runner lease, both renewed by a heartbeat. If that replica dies, the lock and lease
expire and any replica's recovery pass adopts the orphan and reconciles it with the engine.

If Redis stops answering mid-rollout, the swap on the engine goes on: a step that cannot be
recorded is kept on this replica, in order, and the rollout waits for Redis (REDIS_OUTAGE_SECONDS)
before its outcome. When Redis answers again the rollout takes its lock back (or, if another
replica adopted it meanwhile, leaves it to that one), writes what it kept, in order, then the
outcome. Slack is told only what Redis holds: messages are rendered from the stored rollout.
If Redis stays away past the bound, the rollout is left to recovery, which reconciles it with
the engine once Redis is back, as after a crash.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import cast

from bot.domain.clock import Clock
from bot.domain.config import Pipeline, PipelinesConfig
from bot.domain.errors import EngineUnreachable, ImageNotFound
from bot.domain.images import ImageRef, short_digest
from bot.domain.models import (
    Provenance,
    Rollout,
    RolloutKind,
    RolloutStatus,
    Step,
    StepStatus,
    TrafficSplit,
)
from bot.domain.secrets import redact
from bot.ports import (
    LocatedImage,
    Notifier,
    RolloutCancelled,
    RolloutFailed,
    RolloutRequest,
    SideBySideTarget,
    Target,
)
from bot.services import approvals
from bot.services.outcomes import record_outcome
from bot.services.pinning import RAN_LOOKBACK, check_digest, from_registry
from bot.services.traffic import MOVE_TRAFFIC, BehindProxy, Routers
from bot.store.store import Store, StoreUnreachable

logger = logging.getLogger(__name__)


@dataclass
class RolloutSettings:
    lock_ttl_seconds: float = 15.0
    workers: int = 8
    # How long a rollout whose engine went away waits for it before it fails (ENGINE_WAIT_SECONDS).
    engine_wait_seconds: float = 60.0
    engine_poll_seconds: float = 0.5
    # How long a rollout waits for Redis to answer again before its outcome (REDIS_OUTAGE_SECONDS).
    redis_outage_seconds: float = 60.0
    redis_poll_seconds: float = 0.2


class LeftToRecovery(Exception):
    """The rollout could not record its outcome here: recovery finishes it, once."""


class RecordedProgress:
    """Records each step in Redis and re-renders the rollout message."""

    def __init__(self, runner: RolloutRunner, rollout_id: str, pipeline: str, deploy: bool) -> None:
        self.runner = runner
        self.rollout_id = rollout_id
        self.pipeline = pipeline
        self.cancellable = deploy

    @contextmanager
    def step(self, name: str, detail: str = "") -> Iterator[None]:
        now = self.runner.clock.now()
        self.runner.change(
            self.rollout_id,
            lambda r: r.steps.append(Step(name=name, started_at=now, detail=detail)),
            wait=False,
        )
        try:
            yield
        except BaseException as exc:
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            status = StepStatus.skipped if isinstance(exc, RolloutCancelled) else StepStatus.failed
            self._finish(name, status, reason)
            raise
        self._finish(name, StepStatus.done, None)

    def _finish(self, name: str, status: StepStatus, detail: str | None) -> None:
        now = self.runner.clock.now()

        def finish(rollout: Rollout) -> None:
            for step in reversed(rollout.steps):
                if step.name == name and step.ended_at is None:
                    step.status, step.ended_at = status, now
                    if detail:
                        step.detail = self.runner.redact(self.pipeline, detail)[:300]
                    return

        self.runner.change(self.rollout_id, finish, wait=False)

    def detail(self, text: str) -> None:
        def set_detail(rollout: Rollout) -> None:
            if rollout.steps:
                rollout.steps[-1].detail = self.runner.redact(self.pipeline, text)[:300]

        self.runner.change(self.rollout_id, set_detail, wait=False)

    def traffic(self, split: TrafficSplit) -> None:
        def record(rollout: Rollout) -> None:
            rollout.traffic = split

        self.runner.change(self.rollout_id, record, wait=False)

    def check_cancelled(self) -> None:
        if not self.cancellable:
            return  # a rollback restores service; a halt must never stop it
        try:
            state = self.runner.store.pipeline(self.pipeline)
        except Exception as exc:
            if self.runner.store.is_unreachable(exc):
                return  # nobody can halt it while Redis is away; the rollout goes on
            raise
        if state.halted:
            raise RolloutCancelled(f"pipeline halted by {state.halted_by}: {state.halted_reason}")


class RolloutRunner:
    """Runs accepted rollouts on a worker pool and keeps their locks alive."""

    def __init__(
        self,
        *,
        store: Store,
        config: PipelinesConfig,
        targets: dict[str, Target],
        notifier: Notifier,
        clock: Clock,
        instance_id: str,
        settings: RolloutSettings,
        on_live: Callable[[Rollout, Pipeline], None] | None = None,
        routers: Routers | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.targets = targets
        self.notifier = notifier
        self.clock = clock
        self.instance_id = instance_id
        self.settings = settings
        self.on_live = on_live
        self.routers = routers
        self._behind_proxy: dict[str, BehindProxy] = {}
        self._pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="rollout")
        self._active: dict[str, str] = {}  # rollout id -> pipeline, renewed by the heartbeat
        self._active_lock = threading.Lock()
        self._render_lock = threading.Lock()
        self._message_locks: dict[str, threading.Lock] = {}
        self._queued: set[str] = set()
        self._render_pool = ThreadPoolExecutor(4, thread_name_prefix="render")
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        # While Redis is away: each running rollout's changes not yet written (in order) and
        # the rollout as this replica last knew it, with them applied.
        self._unsaved: dict[str, list[Callable[[Rollout], None]]] = {}
        self._known: dict[str, Rollout] = {}
        self._unsaved_lock = threading.Lock()

    def start(self) -> None:
        """Start renewing the locks of running rollouts (Immune.start(); nothing runs before)."""
        if self._heartbeat is not None:
            return
        self._heartbeat = threading.Thread(
            target=self._renew_forever, name="lock-heartbeat", daemon=True
        )
        self._heartbeat.start()

    @property
    def started(self) -> bool:
        return self._heartbeat is not None

    def target_for(self, pipeline: Pipeline) -> Target:
        target = self.targets[pipeline.target]
        if pipeline.traffic is None:
            return target
        # The plugins' config checks admit `traffic:` only for targets that run versions side
        # by side (bot/plugins.py), so this one does.
        if self.routers is None:
            raise RuntimeError("a pipeline has traffic: but the bot was built without routers")
        if pipeline.target not in self._behind_proxy:
            side_by_side = cast(SideBySideTarget, target)
            self._behind_proxy[pipeline.target] = BehindProxy(side_by_side, self.routers)
        return self._behind_proxy[pipeline.target]

    def change(
        self,
        rollout_id: str,
        change: Callable[[Rollout], None],
        *,
        wait: bool = True,
        show: bool = True,
    ) -> Rollout:
        """Update the rollout in Redis, then its Slack message.

        show=False (with wait=False) leaves the message for `show`: a breach moves the
        requests between its claim and the render, which would otherwise hold the GIL then.

        With wait=False (the steps of a swap) the message is updated by the render pool, so
        Slack's latency never sits between stopping the old container and starting the new
        one, and a change Redis cannot take is kept here (`_change_or_keep`) instead of stopping
        the swap; outcomes (wait=True) are written after whatever was kept, and shown before the
        caller moves on while Slack answers within the outbox's short wait (bot/slack/link.py),
        and after it otherwise.
        """
        if not wait:
            return self._change_or_keep(rollout_id, change, show)
        self._write_kept(rollout_id)
        rollout = self.store.update_rollout(rollout_id, change)
        self._render(rollout)
        return rollout

    def show(self, rollout_id: str) -> None:
        self._render_soon(rollout_id)

    def _change_or_keep(
        self, rollout_id: str, change: Callable[[Rollout], None], show: bool = True
    ) -> Rollout:
        with self._unsaved_lock:
            kept = rollout_id in self._unsaved
        if not kept:
            try:
                rollout = self.store.update_rollout(rollout_id, change)
            except StoreUnreachable as exc:
                if rollout_id not in self._known:
                    raise  # not a rollout this runner runs: nothing to keep it for
                logger.warning(
                    "rollout %s: %s; the rollout goes on, its steps kept here until Redis "
                    "answers (up to %gs before its outcome)",
                    rollout_id,
                    exc,
                    self.settings.redis_outage_seconds,
                )
            else:
                with self._unsaved_lock:
                    if rollout_id in self._known:
                        self._known[rollout_id] = rollout
                if show:
                    self._render_soon(rollout.id)
                return rollout
        with self._unsaved_lock:
            local = self._known[rollout_id].model_copy(deep=True)
            change(local)
            self._known[rollout_id] = local
            self._unsaved.setdefault(rollout_id, []).append(change)
        return local

    def _write_kept(self, rollout_id: str) -> None:
        """Write the changes Redis could not take, in order, once it answers again.

        Raises LeftToRecovery when Redis stays away past REDIS_OUTAGE_SECONDS, or when another
        replica adopted the rollout meanwhile (its lock's TTL ran out while Redis was away).
        """
        with self._unsaved_lock:
            kept = list(self._unsaved.get(rollout_id, ()))
            known = self._known.get(rollout_id)
        if not kept or known is None:
            return
        bound = self.settings.redis_outage_seconds
        started = time.monotonic()
        while not self.store.reachable():
            left = bound - (time.monotonic() - started)
            if left <= 0 or self._stop.wait(min(self.settings.redis_poll_seconds, left)):
                raise LeftToRecovery(f"Redis did not answer for {bound:g}s (REDIS_OUTAGE_SECONDS)")
        ttl = self.settings.lock_ttl_seconds
        ours = self.store.renew_rollout_lock(
            known.pipeline, rollout_id, ttl
        ) or self.store.adopt_rollout(known.pipeline, rollout_id, ttl)
        leased = self.store.renew_runner_lease(
            rollout_id, self.instance_id, ttl
        ) or self.store.take_runner_lease(rollout_id, self.instance_id, ttl)
        if not (ours and leased):
            raise LeftToRecovery("another replica adopted it while Redis was away")
        for change in kept:
            self.store.update_rollout(rollout_id, change)
        with self._unsaved_lock:
            del self._unsaved[rollout_id][: len(kept)]
            if not self._unsaved[rollout_id]:
                del self._unsaved[rollout_id]
        logger.info(
            "rollout %s: Redis answers again after %.1fs; %d change(s) kept meanwhile written, "
            "in order",
            rollout_id,
            time.monotonic() - started,
            len(kept),
        )

    def _render_soon(self, rollout_id: str) -> None:
        with self._render_lock:
            if rollout_id in self._queued:
                return  # the queued render reads the latest state when it runs
            self._queued.add(rollout_id)

        def render() -> None:
            with self._render_lock:
                self._queued.discard(rollout_id)
            latest = self.store.rollout(rollout_id)
            if latest is not None:
                self._render(latest)

        self._render_pool.submit(render)

    def _render(self, rollout: Rollout) -> None:
        """Show the rollout's latest state in its message.

        The notifier never raises for Slack's failures and waits for Slack only briefly, while
        it works; a message that goes out later has its ts recorded by bot.services.posted.
        """
        with self._render_lock:
            lock = self._message_locks.setdefault(rollout.id, threading.Lock())
        with lock:
            # Renders of one rollout are serialised and re-read, so an older state never
            # lands after a newer one, and the first post's ts is saved before the next render.
            latest = self.store.rollout(rollout.id) or rollout
            try:
                ts = self.notifier.rollout_changed(latest)
            except Exception:
                logger.exception("could not update the message of rollout %s", rollout.id)
                return
            if ts and latest.message_ts != ts:

                def set_ts(r: Rollout) -> None:
                    r.message_ts = ts

                self.store.update_rollout(rollout.id, set_ts)
            if latest.status.finished:
                with self._render_lock:
                    self._message_locks.pop(rollout.id, None)

    # Submission --------------------------------------------------------------------------

    def submit(self, rollout_id: str) -> Future[None]:
        return self._pool.submit(self._run_guarded, rollout_id, False)

    def submit_recovery(self, rollout_id: str) -> Future[None]:
        return self._pool.submit(self._run_guarded, rollout_id, True)

    def shutdown(self, wait: bool = False) -> None:
        """Stop taking work; a rollout cut short here is adopted by recovery later."""
        self._stop.set()
        self._pool.shutdown(wait=wait, cancel_futures=True)
        self._render_pool.shutdown(wait=wait)

    def _renew_forever(self) -> None:
        interval = self.settings.lock_ttl_seconds / 3
        while not self._stop.wait(interval):
            with self._active_lock:
                active = dict(self._active)
            for rollout_id, pipeline in active.items():
                try:
                    self.store.renew_rollout_lock(
                        pipeline, rollout_id, self.settings.lock_ttl_seconds
                    )
                    self.store.renew_runner_lease(
                        rollout_id, self.instance_id, self.settings.lock_ttl_seconds
                    )
                except Exception as exc:
                    if not self.store.is_unreachable(exc):
                        logger.exception("could not renew the lock of rollout %s", rollout_id)
                    # Redis away: the rollout says so once, and takes the lock back after.

    def _run_guarded(self, rollout_id: str, recovering: bool) -> None:
        if not self.store.take_runner_lease(
            rollout_id, self.instance_id, self.settings.lock_ttl_seconds
        ):
            logger.info(
                "rollout %s is already run by %s", rollout_id, self.store.runner_of(rollout_id)
            )
            return
        rollout = self.store.rollout(rollout_id)
        if rollout is None or (not recovering and rollout.status is not RolloutStatus.queued):
            # Submitted twice (a recovery pass ran it first): it runs exactly once.
            self.store.drop_runner_lease(rollout_id, self.instance_id)
            return
        with self._active_lock:
            self._active[rollout_id] = rollout.pipeline
        with self._unsaved_lock:
            self._known[rollout_id] = rollout
        lost = False
        try:
            if recovering:
                self._recover(rollout)
            else:
                self._run(rollout)
        except Exception as exc:
            # LeftToRecovery, or Redis gone where nothing could wait for it: not ours to end.
            if isinstance(exc, LeftToRecovery) or self.store.is_unreachable(exc):
                lost = True
                logger.error(
                    "rollout %s of %s: %s; its outcome is not recorded here: a replica's "
                    "recovery reconciles it with the engine once Redis answers",
                    rollout_id,
                    rollout.pipeline,
                    exc,
                )
            else:
                logger.exception("rollout %s crashed", rollout_id)
                try:
                    self._fail(
                        rollout_id,
                        f"internal error: {type(exc).__name__}: {exc}",
                        "",
                        restored=False,
                    )
                except LeftToRecovery as left:
                    lost = True
                    logger.error("rollout %s: %s; left to recovery", rollout_id, left)
        finally:
            with self._active_lock:
                self._active.pop(rollout_id, None)
            with self._unsaved_lock:
                self._known.pop(rollout_id, None)
                self._unsaved.pop(rollout_id, None)
            if not lost:
                # Left to recovery, the lock and lease are not ours to free: they expire.
                self.store.release_rollout(rollout.pipeline, rollout_id)
                self.store.drop_runner_lease(rollout_id, self.instance_id)

    # One rollout -------------------------------------------------------------------------

    def _run(self, rollout: Rollout) -> None:
        pipeline = self.config.pipelines[rollout.pipeline]
        target = self.target_for(pipeline)
        progress = RecordedProgress(
            self, rollout.id, rollout.pipeline, deploy=rollout.kind is RolloutKind.deploy
        )
        image = ImageRef(pipeline.image, rollout.image_tag, rollout.image_digest)
        if rollout.kind is not RolloutKind.deploy and isinstance(target, BehindProxy):
            # Behind a proxy a rollback to a version that still runs is one route: first. A
            # rollback accepted with its split moved the requests in the ack already
            # (traffic.move_now); the rest is put in order here.
            first = rollout.traffic if rollout.step(MOVE_TRAFFIC) is not None else None
            rollout = self.change(rollout.id, _mark(RolloutStatus.in_flight), wait=False)
            try:
                moved = target.return_to(rollout.pipeline, pipeline, image.version, progress, first)
            except RolloutFailed as exc:
                self._fail(rollout.id, exc.reason, exc.logs_tail, restored=exc.restored)
                return
            if moved is not None:
                self._keep_provenance(rollout)  # nothing was located: the image ran before
                self._went_live(rollout.id, pipeline, moved.gap_seconds, moved.notes)
                return
        else:
            rollout = self.change(rollout.id, _mark(RolloutStatus.in_flight), wait=False)
        request: RolloutRequest | None = None  # set once the swap may have begun
        try:
            if image.digest is None and image.tag is not None and from_registry(pipeline):
                # The ack's quick lookup timed out: pin the tag before anything is pulled.
                image = self._resolve(rollout.id, target, pipeline, image, progress)
            with progress.step("locate image", detail=image.reference):
                located = target.locate(rollout.pipeline, pipeline, image, progress)
            self._record_provenance(rollout.id, located)
            if pipeline.tests is not None and rollout.kind is RolloutKind.deploy:
                progress.check_cancelled()
                with progress.step("test gate", detail=" ".join(pipeline.tests.command)):
                    result = target.run_tests(pipeline, located, rollout.id)
                    if not result.passed:
                        why = "timed out" if result.timed_out else f"exit code {result.exit_code}"
                        raise RolloutFailed(f"tests failed ({why})", logs_tail=result.output_tail)
            last_good = self.store.pipeline(rollout.pipeline).last_good_version or None
            request = _request(rollout, pipeline, image, located, last_good)
            swap = target.roll_out(request, progress)
        except EngineUnreachable as exc:
            self._engine_went_away(rollout, pipeline, target, request, progress, exc)
            return
        except ImageNotFound as exc:
            self._fail(rollout.id, exc.message, "", restored=True)
            self.notifier.tell_requester(rollout.response_url, exc.text())
            return
        except RolloutCancelled as exc:
            self._finish(rollout.id, RolloutStatus.cancelled, str(exc))
            return
        except RolloutFailed as exc:
            self._fail(rollout.id, exc.reason, exc.logs_tail, restored=exc.restored)
            return
        self._went_live(rollout.id, pipeline, swap.gap_seconds, swap.notes)

    def _resolve(
        self,
        rollout_id: str,
        target: Target,
        pipeline: Pipeline,
        image: ImageRef,
        progress: RecordedProgress,
    ) -> ImageRef:
        """The rollout's first step when the ack could not pin the tag: resolve it (with the
        engine's own timeout) and record the digest before anything runs."""
        with progress.step("resolve tag", detail=image.tagged):
            digest = target.resolve(pipeline, image, quick=False)
            check_digest(image, digest)
            progress.detail(f"{image.tag} -> {short_digest(digest)}")
        pinned = image.pinned(digest)

        def record(rollout: Rollout) -> None:
            rollout.image_digest = digest
            rollout.reference = pinned.reference

        self.change(rollout_id, record, wait=False)
        return pinned

    def _keep_provenance(self, rollout: Rollout) -> None:
        """A version brought back without locating its image keeps the provenance the rollout
        that last ran it recorded (the same digest, when one is pinned)."""
        earlier = self.store.newest_rollout(
            rollout.pipeline,
            lambda r: (
                r.id != rollout.id
                and r.version == rollout.version
                and r.provenance is not None
                and r.image_digest == rollout.image_digest
            ),
            RAN_LOOKBACK,
        )
        if earlier is None or earlier.provenance is None:
            return
        provenance = earlier.provenance

        def record(r: Rollout) -> None:
            r.provenance = provenance

        self.change(rollout.id, record, wait=False)

    def _record_provenance(self, rollout_id: str, located: LocatedImage) -> None:
        provenance = Provenance.from_labels(dict(located.labels))
        if provenance is None:
            return

        def record(rollout: Rollout) -> None:
            rollout.provenance = provenance

        self.change(rollout_id, record, wait=False)

    def _recover(self, rollout: Rollout) -> None:
        """Reconcile a rollout whose bot died: finish it if the new version runs, else undo."""
        if rollout.status.finished:
            # Its outcome is written and its bot died before freeing the pipeline (a bot from
            # before outcomes and releases were one write): freeing it (below) is all that is
            # left; "undo" here would act on the engine for a rollout that never ran.
            logger.warning(
                "rollout %s of %s ended %s before its bot freed the pipeline: freed",
                rollout.id,
                rollout.pipeline,
                rollout.status.value,
            )
            return
        pipeline = self.config.pipelines[rollout.pipeline]
        target = self.target_for(pipeline)
        progress = RecordedProgress(self, rollout.id, rollout.pipeline, deploy=False)
        if rollout.status in (RolloutStatus.awaiting_approval, RolloutStatus.queued):
            if rollout.status is RolloutStatus.awaiting_approval:
                approvals.expire_rollout(
                    self.store, self.notifier, self.clock, pipeline.approvals, rollout.id
                )
            else:
                # Queued, never started: this worker holds its lease and lock, so it runs the
                # rollout from the start, here, once.
                self._run(rollout)
            return
        image = ImageRef(pipeline.image, rollout.image_tag, rollout.image_digest)
        try:
            located = target.locate(rollout.pipeline, pipeline, image)
            live = target.recover(_request(rollout, pipeline, image, located), progress)
        except (RolloutFailed, ImageNotFound, EngineUnreachable) as exc:
            # An engine away here fails the rollout; when the engine is back, the engine job
            # makes it run what Redis records as live (the version from before this rollout).
            reason = getattr(exc, "reason", None) or getattr(exc, "message", str(exc))
            self._fail(
                rollout.id,
                f"bot restarted mid-rollout; recovery failed: {reason}",
                "",
                restored=False,
            )
            return
        if live:
            self.change(
                rollout.id, lambda r: r.notes.append("bot restarted mid-rollout; finished it")
            )
            self._went_live(rollout.id, pipeline, None, [])
        else:
            restored = f"; {rollout.from_version} serves again" if rollout.from_version else ""
            self._fail(
                rollout.id, f"bot restarted mid-rollout; rolled back{restored}", "", restored=True
            )

    # The engine went away --------------------------------------------------------------

    def _engine_went_away(
        self,
        rollout: Rollout,
        pipeline: Pipeline,
        target: Target,
        request: RolloutRequest | None,
        progress: RecordedProgress,
        exc: EngineUnreachable,
    ) -> None:
        """Wait for the engine (ENGINE_WAIT_SECONDS), then finish or undo the swap once.

        Never a second attempt at the swap: once the engine is back, `recover` (the same
        reconciliation as after a bot crash) keeps the new version if it runs healthy, else
        puts the old one back; `reconcile` then stops any other version the engine's restart
        policies brought back. If the engine stays away the rollout fails, and the engine
        job reconciles with what Redis records as live (the old version) when it returns.
        """
        bound = self.settings.engine_wait_seconds
        deadline = time.monotonic() + bound
        logger.warning(
            "rollout %s of %s: %s Waiting up to %gs",
            rollout.id,
            rollout.pipeline,
            exc.message,
            bound,
        )
        while True:
            with progress.step("engine unreachable", detail=f"{exc.message} Waiting {bound:g}s"):
                back = self._wait_for_engine(target, deadline)
                progress.detail("the engine answers again" if back else f"no answer for {bound:g}s")
            if not back:
                self._fail(
                    rollout.id,
                    f"the engine did not answer for {bound:g}s (ENGINE_WAIT_SECONDS) "
                    + ("mid-swap" if request else "before the swap")
                    + "; when it is back, the version recorded as live is what keeps serving",
                    "",
                    restored=request is None,
                )
                return
            if request is None:
                self._fail(
                    rollout.id,
                    "the engine went away before the swap began; nothing was changed: deploy again",
                    "",
                    restored=True,
                )
                return
            try:
                with progress.step("reconcile", detail="after the engine came back"):
                    live = target.recover(request, progress)
                    keep = request.image.version if live else (rollout.from_version or "")
                    done = target.reconcile(rollout.pipeline, pipeline, keep)
                break
            except EngineUnreachable as again:
                # An engine shutting down still answers a ping on a kept-alive connection, and
                # one that restarts may go away again: recovering is safe to repeat.
                exc = again
            except (RolloutFailed, ImageNotFound) as failed:
                reason = getattr(failed, "reason", None) or getattr(failed, "message", "")
                self._fail(
                    rollout.id,
                    f"the engine went away mid-swap; after it came back: {reason}",
                    "",
                    restored=False,
                )
                return
        how = "finished" if live else "undone"
        notes = [f"the engine went away mid-swap; {how} when it came back", *done]
        if live:
            self._went_live(rollout.id, pipeline, None, notes)
        else:
            self.change(rollout.id, lambda r: r.notes.extend(notes), wait=False)
            self._fail(
                rollout.id,
                "the engine went away mid-swap; rolled back when it came back",
                "",
                restored=True,
            )

    def _wait_for_engine(self, target: Target, deadline: float) -> bool:
        while True:
            if target.health().get("ok"):
                return True
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.wait(min(self.settings.engine_poll_seconds, left)):
                return False

    # Outcomes ----------------------------------------------------------------------------

    def _went_live(
        self, rollout_id: str, pipeline: Pipeline, gap: float | None, notes: list[str]
    ) -> None:
        self._write_kept(rollout_id)
        now = self.clock.now()
        current = self.store.rollout(rollout_id)
        assert current is not None
        previous = self.store.pipeline(current.pipeline)
        # A restored version is the last good one: not watched again for this incident.
        good_at_once = current.kind is not RolloutKind.deploy or not pipeline.kpis

        def live(rollout: Rollout) -> None:
            rollout.status = RolloutStatus.good if good_at_once else RolloutStatus.live
            rollout.live_at = now
            rollout.swap_gap_seconds = gap
            rollout.notes.extend(notes)
            if good_at_once:
                rollout.finished_at = now

        fields: dict[str, str | float | None] = {
            "live_version": current.version,
            "live_rollout": current.id,
        }
        if good_at_once:
            fields.update(last_good_version=current.version, last_good_rollout=current.id)
        if previous.live_rollout and previous.live_rollout != current.id:
            self._supersede(previous.live_rollout)
        record_outcome(
            self.store,
            current,
            "live",
            action=f"{current.kind.value}.live",
            # The entry says where it stands now: `good` at once, or `live` while watched.
            audit_outcome="good" if good_at_once else "live",
            detail=f"{current.version} live"
            + (f"; swap gap {gap:.3f}s" if gap is not None else ""),
        )
        # The pipeline's record, its lock and the rollout's status change in one write (see
        # `_settle`): a bot killed before it is adopted, one killed after it is watched.
        rollout = self._settle(rollout_id, live, **fields)
        if rollout.status is RolloutStatus.live and self.on_live is not None:
            self.on_live(rollout, pipeline)

    def _settle(
        self, rollout_id: str, change: Callable[[Rollout], None], **fields: str | float | None
    ) -> Rollout:
        """`change` (the outcome) with the pipeline's `fields` and its lock freed, in one write
        (Store.settle_rollout): whoever sees a rollout ended may start the next one at once,
        and no crash leaves a rollout in flight that no lock names (recovery finds rollouts by
        their lock)."""
        self._write_kept(rollout_id)
        settled = self.store.settle_rollout(rollout_id, change, **fields)
        self._render(settled)
        return settled

    def _supersede(self, rollout_id: str) -> None:
        def supersede(rollout: Rollout) -> None:
            if rollout.status is RolloutStatus.live:
                rollout.status = RolloutStatus.superseded
                rollout.finished_at = self.clock.now()

        with suppress(KeyError):
            self.change(rollout_id, supersede)

    def redact(self, pipeline: str, text: str) -> str:
        """`text` from the engine or the image (a failure, the logs' tail) without the
        pipeline's secret values: it is kept in Redis and shown in Slack and the exports."""
        known = self.config.pipelines.get(pipeline)
        return redact(text, known.secret_values if known else [])

    def _fail(self, rollout_id: str, reason: str, logs_tail: str, *, restored: bool) -> None:
        failing = self.store.rollout(rollout_id)
        if failing is not None:
            reason = self.redact(failing.pipeline, reason)
            logs_tail = self.redact(failing.pipeline, logs_tail)

        def fail(rollout: Rollout) -> None:
            rollout.status = RolloutStatus.failed
            rollout.error = reason
            rollout.logs_tail = logs_tail[-3000:]
            rollout.finished_at = self.clock.now()
            if rollout.from_version:
                rollout.notes.append(
                    f"{rollout.from_version} serves again"
                    if restored
                    else f"could NOT restore {rollout.from_version}: check the engine now"
                )

        if failing is None:
            raise KeyError(f"rollout {rollout_id} does not exist")
        self._write_kept(rollout_id)
        record_outcome(self.store, failing, "failed", detail=reason)
        self._settle(rollout_id, fail)

    def _finish(self, rollout_id: str, status: RolloutStatus, reason: str) -> None:
        def finish(rollout: Rollout) -> None:
            rollout.status = status
            rollout.error = reason
            rollout.finished_at = self.clock.now()

        self._write_kept(rollout_id)
        current = self.store.rollout(rollout_id)
        if current is None:
            raise KeyError(f"rollout {rollout_id} does not exist")
        record_outcome(self.store, current, status.value, detail=reason)
        self._settle(rollout_id, finish)


def _mark(status: RolloutStatus) -> Callable[[Rollout], None]:
    def mark(rollout: Rollout) -> None:
        rollout.status = status

    return mark


def _request(
    rollout: Rollout,
    pipeline: Pipeline,
    image: ImageRef,
    located: LocatedImage,
    last_good_version: str | None = None,
) -> RolloutRequest:
    return RolloutRequest(
        pipeline_name=rollout.pipeline,
        pipeline=pipeline,
        image=image,
        located=located,
        rollout_id=rollout.id,
        from_version=rollout.from_version,
        rollback=rollout.kind is not RolloutKind.deploy,
        last_good_version=last_good_version,
    )
