"""Running rollouts: the steps after a /deploy or /rollback was accepted.

A rollout runs on a worker thread of the replica that accepted it, under the pipeline's rollout
lock and a runner lease, both renewed by a heartbeat. If that replica dies, the lock and lease
expire and any replica's recovery pass adopts the orphan and reconciles it with the engine.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import cast

from bot.domain.clock import Clock
from bot.domain.config import Pipeline, PipelinesConfig
from bot.domain.errors import ImageNotFound
from bot.domain.images import ImageRef
from bot.domain.models import (
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
from bot.services.traffic import BehindProxy, Routers
from bot.store.store import Store

logger = logging.getLogger(__name__)


@dataclass
class RolloutSettings:
    lock_ttl_seconds: float = 15.0
    workers: int = 8


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
        state = self.runner.store.pipeline(self.pipeline)
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
        self, rollout_id: str, change: Callable[[Rollout], None], *, wait: bool = True
    ) -> Rollout:
        """Update the rollout in Redis, then its Slack message.

        With wait=False (the steps of a swap) the message is updated by the render pool, so
        Slack's latency never sits between stopping the old container and starting the new
        one; outcomes (wait=True) are shown before the caller moves on while Slack answers
        within the outbox's short wait (bot/slack/link.py), and after it otherwise.
        """
        rollout = self.store.update_rollout(rollout_id, change)
        if wait:
            self._render(rollout)
        else:
            self._render_soon(rollout.id)
        return rollout

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
                except Exception:
                    logger.exception("could not renew the lock of rollout %s", rollout_id)

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
        try:
            if recovering:
                self._recover(rollout)
            else:
                self._run(rollout)
        except Exception as exc:
            logger.exception("rollout %s crashed", rollout_id)
            self._fail(
                rollout_id, f"internal error: {type(exc).__name__}: {exc}", "", restored=False
            )
        finally:
            with self._active_lock:
                self._active.pop(rollout_id, None)
            self.store.release_rollout(rollout.pipeline, rollout_id)
            self.store.drop_runner_lease(rollout_id, self.instance_id)

    # One rollout -------------------------------------------------------------------------

    def _run(self, rollout: Rollout) -> None:
        pipeline = self.config.pipelines[rollout.pipeline]
        target = self.target_for(pipeline)
        progress = RecordedProgress(
            self, rollout.id, rollout.pipeline, deploy=rollout.kind is RolloutKind.deploy
        )
        rollout = self.change(rollout.id, _mark(RolloutStatus.in_flight), wait=False)
        image = ImageRef(pipeline.image, rollout.image_tag, rollout.image_digest)
        if rollout.kind is not RolloutKind.deploy and isinstance(target, BehindProxy):
            # Behind a proxy a rollback to a version that still runs is one route: first.
            try:
                moved = target.return_to(rollout.pipeline, pipeline, image.version, progress)
            except RolloutFailed as exc:
                self._fail(rollout.id, exc.reason, exc.logs_tail, restored=exc.restored)
                return
            if moved is not None:
                self._went_live(rollout.id, pipeline, moved.gap_seconds, moved.notes)
                return
        try:
            with progress.step("locate image", detail=image.reference):
                located = target.locate(rollout.pipeline, pipeline, image)
            if pipeline.tests is not None and rollout.kind is RolloutKind.deploy:
                progress.check_cancelled()
                with progress.step("test gate", detail=" ".join(pipeline.tests.command)):
                    result = target.run_tests(pipeline, located, rollout.id)
                    if not result.passed:
                        why = "timed out" if result.timed_out else f"exit code {result.exit_code}"
                        raise RolloutFailed(f"tests failed ({why})", logs_tail=result.output_tail)
            swap = target.roll_out(_request(rollout, pipeline, image, located), progress)
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

    def _recover(self, rollout: Rollout) -> None:
        """Reconcile a rollout whose bot died: finish it if the new version runs, else undo."""
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
        except (RolloutFailed, ImageNotFound) as exc:
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

    # Outcomes ----------------------------------------------------------------------------

    def _went_live(
        self, rollout_id: str, pipeline: Pipeline, gap: float | None, notes: list[str]
    ) -> None:
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

        # The pipeline's record and lock change before the rollout's status, so whoever sees
        # the outcome also sees the pipeline as it now is (live version, nothing in flight).
        fields: dict[str, str | float | None] = {
            "live_version": current.version,
            "live_rollout": current.id,
        }
        if good_at_once:
            fields.update(last_good_version=current.version, last_good_rollout=current.id)
        self.store.update_pipeline(current.pipeline, **fields)
        if previous.live_rollout and previous.live_rollout != current.id:
            self._supersede(previous.live_rollout)
        self.store.release_rollout(current.pipeline, rollout_id)
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
        rollout = self.change(rollout_id, live)
        if rollout.status is RolloutStatus.live and self.on_live is not None:
            self.on_live(rollout, pipeline)

    def _release_before_outcome(self, rollout_id: str) -> Rollout | None:
        """Free the pipeline before recording the outcome: whoever sees a rollout ended may
        start the next one at once."""
        current = self.store.rollout(rollout_id)
        if current is not None:
            self.store.release_rollout(current.pipeline, rollout_id)
        return current

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

        current = self._release_before_outcome(rollout_id)
        if current is not None:
            record_outcome(self.store, current, "failed", detail=reason)
        self.change(rollout_id, fail)

    def _finish(self, rollout_id: str, status: RolloutStatus, reason: str) -> None:
        def finish(rollout: Rollout) -> None:
            rollout.status = status
            rollout.error = reason
            rollout.finished_at = self.clock.now()

        current = self._release_before_outcome(rollout_id)
        if current is not None:
            record_outcome(self.store, current, status.value, detail=reason)
        self.change(rollout_id, finish)


def _mark(status: RolloutStatus) -> Callable[[Rollout], None]:
    def mark(rollout: Rollout) -> None:
        rollout.status = status

    return mark


def _request(
    rollout: Rollout, pipeline: Pipeline, image: ImageRef, located: LocatedImage
) -> RolloutRequest:
    return RolloutRequest(
        pipeline_name=rollout.pipeline,
        pipeline=pipeline,
        image=image,
        located=located,
        rollout_id=rollout.id,
        from_version=rollout.from_version,
        rollback=rollout.kind is not RolloutKind.deploy,
    )
