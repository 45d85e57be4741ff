"""Traffic behind a proxy: start-first swaps, blue/green and canary splits, and the proxy's
routes put back after it restarts (DESIGN.md, "Traffic").

`BehindProxy` is the Target a pipeline with `traffic:` is deployed through: it starts the new
version beside the one serving (the side-by-side target does the containers) and moves the
requests with the proxy (the Router does the runtime API). Every split is recorded on the
rollout before the proxy is told, so Redis always says what the proxy must serve.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext

from bot.domain.config import Pipeline, Traffic
from bot.domain.images import ImageRef
from bot.domain.models import Rollout, Step, StepStatus, TrafficSplit
from bot.domain.text import say
from bot.ports import (
    LiveVersion,
    LocatedImage,
    Progress,
    RolloutFailed,
    RolloutRequest,
    Router,
    RunningVersion,
    SideBySideTarget,
    SwapResult,
    TestResult,
    TrafficError,
)
from bot.services.context import Context
from bot.store.keys import Once

logger = logging.getLogger(__name__)

MOVE_TRAFFIC = "move traffic"


class Routers:
    """One Router per proxy runtime API, made on first use (the composition root says how)."""

    def __init__(self, make: Callable[[str], Router]) -> None:
        self._make = make
        self._made: dict[str, Router] = {}
        self._lock = threading.Lock()

    def for_traffic(self, traffic: Traffic) -> Router:
        with self._lock:
            if traffic.runtime_api not in self._made:
                self._made[traffic.runtime_api] = self._make(traffic.runtime_api)
            return self._made[traffic.runtime_api]


def describe(split: TrafficSplit, version: str) -> str:
    if split.baseline_port is None or split.baseline_retired:
        return f"100% to {version} (port {split.port})"
    return (
        f"{split.percent}% to {version} (port {split.port}), "
        f"{100 - split.percent}% to {split.baseline_version} (port {split.baseline_port})"
    )


def _serving(
    running: list[RunningVersion], routes: dict[int, int], besides: RunningVersion | None = None
) -> RunningVersion | None:
    """The running version with the most traffic (the newest when the proxy knows none)."""
    others = [v for v in running if besides is None or v.port != besides.port]
    if not others:
        return None
    return max(others, key=lambda v: (routes.get(v.port, -1), v.started_at))


class BehindProxy:
    """The Target of a pipeline with `traffic:`: versions side by side, requests moved by the
    proxy; nothing is stopped before its replacement is healthy and holds the traffic."""

    def __init__(
        self,
        target: SideBySideTarget,
        routers: Routers,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.target = target
        self.routers = routers
        self.sleep = sleep

    def health(self) -> dict[str, object]:
        return self.target.health()

    def locate(
        self,
        pipeline_name: str,
        pipeline: Pipeline,
        image: ImageRef,
        progress: Progress | None = None,
    ) -> LocatedImage:
        return self.target.locate(pipeline_name, pipeline, image, progress)

    def deployable_versions(self, pipeline_name: str, pipeline: Pipeline) -> list[str]:
        return self.target.deployable_versions(pipeline_name, pipeline)

    def resolve(self, pipeline: Pipeline, image: ImageRef, *, quick: bool) -> str:
        return self.target.resolve(pipeline, image, quick=quick)

    def run_tests(self, pipeline: Pipeline, located: LocatedImage, rollout_id: str) -> TestResult:
        return self.target.run_tests(pipeline, located, rollout_id)

    def router(self, pipeline: Pipeline) -> Router:
        assert pipeline.traffic is not None
        return self.routers.for_traffic(pipeline.traffic)

    def live(self, pipeline_name: str, pipeline: Pipeline) -> LiveVersion | None:
        running = self.target.versions(pipeline_name, pipeline)
        try:
            routes = self.router(pipeline).routes(_traffic(pipeline))
        except TrafficError:
            routes = {}
        serving = _serving(running, routes)
        if serving is None:
            return None
        return LiveVersion(version=serving.version, rollout_id=serving.rollout_id)

    def runs(self, pipeline_name: str, pipeline: Pipeline, rollout_id: str) -> bool:
        """Whether the rollout's version runs (it may share the traffic with another)."""
        return bool(rollout_id) and any(
            v.rollout_id == rollout_id for v in self.target.versions(pipeline_name, pipeline)
        )

    def _routes_before_any_change(self, pipeline: Pipeline, progress: Progress) -> dict[int, int]:
        traffic = _traffic(pipeline)
        with progress.step("proxy", detail=f"{traffic.proxy} at {traffic.runtime_api}"):
            try:
                return self.router(pipeline).routes(traffic)
            except TrafficError as exc:
                raise RolloutFailed(
                    f"{traffic.proxy} runtime API {traffic.runtime_api}: {exc.reason}; "
                    "nothing was started and no traffic moved",
                    restored=True,
                ) from exc

    def roll_out(self, request: RolloutRequest, progress: Progress) -> SwapResult:
        pipeline, name = request.pipeline, request.pipeline_name
        traffic = _traffic(pipeline)
        routes = self._routes_before_any_change(pipeline, progress)
        running = self.target.versions(name, pipeline)
        same = [
            v
            for v in running
            if v.version == request.image.version and v.image_id == request.located.image_id
        ]
        started = not same
        if same:
            # A rollback during the watch: the old version still runs; only traffic moves.
            new = max(same, key=lambda v: (routes.get(v.port, -1), v.started_at))
        else:
            progress.check_cancelled()
            new = self.target.start_beside(request, progress)
        baseline = _serving(running, routes, besides=new)
        final, split = _first_split(request, new, baseline)
        progress.traffic(split)
        with progress.step(MOVE_TRAFFIC, detail=describe(split, request.image.version)):
            try:
                self.router(pipeline).route(traffic, split.weights())
            except TrafficError as exc:
                if started:
                    self.target.stop_version(name, pipeline, new.port, keep=False)
                keeps = f"; {baseline.version} keeps its traffic" if baseline else ""
                raise RolloutFailed(
                    f"{traffic.proxy} refused to move traffic: {exc.reason}{keeps}", restored=True
                ) from exc
        for stray in running:
            if stray.port not in (new.port, split.baseline_port):
                self.target.stop_version(name, pipeline, stray.port)
        notes = []
        if final and baseline is not None:
            self.retire(name, pipeline, split, progress)
        elif baseline is not None:
            notes.append(
                f"{baseline.version} keeps running on port {baseline.port} until the watch ends"
            )
        return SwapResult(gap_seconds=None, notes=notes)

    def send_to(self, pipeline: Pipeline, split: TrafficSplit) -> bool:
        """Every request where `split` says, at once: the way back to a version that still
        runs. One runtime-API round trip when the proxy's slots already serve these ports
        (Router.shift), a full route when they do not (the proxy restarted). False, nothing
        moved, when no process listens on a port that would get requests (its container
        died): the caller takes the full path. TrafficError when the proxy refuses.
        """
        if not self._listening(split):
            return False
        self.shift_to(pipeline, split)
        return True

    def _listening(self, split: TrafficSplit) -> bool:
        """Something listens on every port the split gives requests to."""
        return all(self.target.listens(port) for port, weight in split.weights().items() if weight)

    def shift_to(self, pipeline: Pipeline, split: TrafficSplit) -> None:
        """`send_to` without its listening check, for a caller that has just made it."""
        router, traffic, weights = self.router(pipeline), _traffic(pipeline), split.weights()
        if not router.shift(traffic, weights):
            router.route(traffic, weights)

    def return_to(
        self,
        name: str,
        pipeline: Pipeline,
        version: str,
        progress: Progress,
        moved: TrafficSplit | None = None,
    ) -> SwapResult | None:
        """A rollback to a version that still runs (the watch's baseline): only the traffic
        moves, before anything else (no image look-up, no start). None when it does not run.

        `moved`: the split the requests already went to when the rollback was accepted
        (`move_now`); what else runs is put in order after it. Without one the engine and the
        proxy are read first.

        The running container is the exact image that ran before, even if its tag has moved.
        """
        traffic = _traffic(pipeline)
        if moved is not None:
            self._stop_strays(name, pipeline, self.target.versions(name, pipeline), moved)
            self.retire(name, pipeline, moved, progress)
            return SwapResult(gap_seconds=None)
        running = self.target.versions(name, pipeline)
        if not any(v.version == version for v in running):
            return None
        try:
            routes = self.router(pipeline).routes(traffic)
        except TrafficError:
            return None  # the full path says why, before anything changes
        back = max(
            (v for v in running if v.version == version),
            key=lambda v: (routes.get(v.port, -1), v.started_at),
        )
        replaced = _serving(running, routes, besides=back)
        split = TrafficSplit(
            port=back.port,
            baseline_port=replaced.port if replaced else None,
            baseline_version=replaced.version if replaced else "",
            baseline_rollout=replaced.rollout_id if replaced else "",
            baseline_reference=replaced.reference if replaced else "",
        )
        progress.traffic(split)
        with progress.step(MOVE_TRAFFIC, detail=describe(split, version)):
            try:
                self.router(pipeline).route(traffic, split.weights())
            except TrafficError as exc:
                raise RolloutFailed(
                    f"{traffic.proxy} refused to move traffic back: {exc.reason}", restored=True
                ) from exc
        self._stop_strays(name, pipeline, running, split)
        self.retire(name, pipeline, split, progress)
        return SwapResult(gap_seconds=None)

    def _stop_strays(
        self, name: str, pipeline: Pipeline, running: list[RunningVersion], split: TrafficSplit
    ) -> None:
        """Stop (and keep) every running version the split gives no place."""
        for stray in running:
            if stray.port not in (split.port, split.baseline_port):
                self.target.stop_version(name, pipeline, stray.port)

    def retire(
        self, name: str, pipeline: Pipeline, split: TrafficSplit, progress: Progress | None
    ) -> None:
        """Drain the baseline (requests in flight finish), then stop and keep it."""
        if split.baseline_port is None or split.baseline_retired:
            return
        traffic = _traffic(pipeline)
        retired = split.model_copy(update={"baseline_retired": True})
        if progress is not None:
            progress.traffic(retired)
        detail = f"{split.baseline_version} on port {split.baseline_port} for {traffic.drain:g}s"
        with progress.step("drain", detail=detail) if progress is not None else nullcontext():
            try:
                self.router(pipeline).drain(traffic, split.baseline_port)
            except TrafficError as exc:
                # Its weight is 0 already: no new requests reach it either way.
                logger.warning("%s: could not drain port %s: %s", name, split.baseline_port, exc)
            self.sleep(traffic.drain)
            try:
                taken_back = self.router(pipeline).routes(traffic).get(split.baseline_port, 0) > 0
            except TrafficError:
                taken_back = False
            if taken_back:
                # A rollback gave it the traffic again while it drained: it serves now.
                logger.info("%s: %s serves again; not stopped", name, split.baseline_version)
                return
            self.target.stop_version(name, pipeline, split.baseline_port)

    def reconcile(self, pipeline_name: str, pipeline: Pipeline, live_version: str) -> list[str]:
        """Nothing to stop: behind a proxy several versions run at once by design, and only
        the routes decide which serves (restore_routes puts them back)."""
        return []

    def recover(self, request: RolloutRequest, progress: Progress) -> bool:
        """A rollout whose bot died: finish it if its version runs and is healthy, else send
        everything back to what served before and stop it."""
        pipeline, name = request.pipeline, request.pipeline_name
        routes = self._routes_before_any_change(pipeline, progress)
        running = self.target.versions(name, pipeline)
        # Its version: started by this rollout, or a kept container of the same image it
        # started again (that one still carries the label of the rollout that created it).
        mine = [
            v
            for v in running
            if v.rollout_id == request.rollout_id
            or (v.version == request.image.version and v.image_id == request.located.image_id)
        ]
        new = mine[0] if mine else None
        if new is not None:
            try:
                with progress.step("health check", detail="after bot restart"):
                    self.target.check_health(name, pipeline, new.port)
            except RolloutFailed:
                new = None
        baseline = (
            _serving(running, routes, besides=new)
            if new
            else _serving([v for v in running if v not in mine], routes)
        )
        if new is not None:
            final, split = _first_split(request, new, baseline)
            progress.traffic(split)
            with progress.step(MOVE_TRAFFIC, detail=describe(split, new.version)):
                self._route(pipeline, split)
            if final and baseline is not None:
                self.retire(name, pipeline, split, progress)
            return True
        if baseline is not None:
            with progress.step("restore", detail=f"all traffic to {baseline.version}"):
                self._route(pipeline, TrafficSplit(port=baseline.port))
        for version in mine:
            self.target.stop_version(name, pipeline, version.port, keep=False)
        return False

    def _route(self, pipeline: Pipeline, split: TrafficSplit) -> None:
        try:
            self.router(pipeline).route(_traffic(pipeline), split.weights())
        except TrafficError as exc:
            raise RolloutFailed(
                f"the proxy refused the routes: {exc.reason}", restored=False
            ) from exc


def _first_split(
    request: RolloutRequest, new: RunningVersion, baseline: RunningVersion | None
) -> tuple[bool, TrafficSplit]:
    """Where a new version's requests go first, and whether that is final: all of them for a
    rollback, a pipeline without KPIs or nothing to compare with, else the plan's first step."""
    plan = _traffic(request.pipeline).plan
    final = request.rollback or not request.pipeline.kpis
    percent = 100 if final or baseline is None else plan[0]
    return final, TrafficSplit(
        port=new.port,
        baseline_port=baseline.port if baseline else None,
        baseline_version=baseline.version if baseline else "",
        baseline_rollout=baseline.rollout_id if baseline else "",
        baseline_reference=baseline.reference if baseline else "",
        percent=percent,
        steps=len(plan) if percent < 100 else 1,
    )


def _traffic(pipeline: Pipeline) -> Traffic:
    assert pipeline.traffic is not None, "only pipelines with traffic: are behind a proxy"
    return pipeline.traffic


def served(ctx: Context, pipeline: Pipeline) -> BehindProxy:
    target = ctx.target(pipeline)
    assert isinstance(target, BehindProxy), "a pipeline with traffic: deploys through BehindProxy"
    return target


def _record(ctx: Context, rollout_id: str, split: TrafficSplit, *, wait: bool = True) -> Rollout:
    """Write where the rollout's requests go (before the proxy is told)."""

    def record(rollout: Rollout) -> None:
        rollout.traffic = split

    return ctx.runner.change(rollout_id, record, wait=wait)


# During the watch ---------------------------------------------------------------------------


def held_short(rollout: Rollout, pipeline: Pipeline) -> bool:
    """A canary that has not reached 100% (a step held for want of data)."""
    split = rollout.traffic
    return (
        split is not None
        and pipeline.traffic is not None
        and split.baseline_port is not None
        and not split.baseline_retired
        and split.percent < 100
    )


def advance(
    ctx: Context,
    rollout: Rollout,
    pipeline: Pipeline,
    *,
    ready: bool,
    to_the_end: bool = False,
) -> TrafficSplit | None:
    """A canary's next step once its time has come, no breach so far, and every compare KPI
    judged (`ready`): a step with not enough data holds, never promotes by itself. Steps are
    taken one at a time; `to_the_end` goes to 100% (the watch ended with every KPI judged)."""
    split = rollout.traffic
    traffic = pipeline.traffic
    if split is None or traffic is None or rollout.live_at is None:
        return None
    if split.baseline_port is None or split.baseline_retired:
        return None
    plan = traffic.plan
    due = min(
        len(plan) - 1, math.floor((ctx.clock.now() - rollout.live_at) / traffic.step_duration)
    )
    if to_the_end:
        due = len(plan) - 1
    if due <= split.step or not ready:
        return None
    due = len(plan) - 1 if to_the_end else split.step + 1
    moved = split.model_copy(update={"step": due, "percent": plan[due], "held_since": None})

    _record(ctx, rollout.id, moved)
    try:
        served(ctx, pipeline).router(pipeline).route(traffic, moved.weights())
    except TrafficError as exc:
        # Recorded already: the next routes check puts it in place once the proxy answers.
        logger.error("%s: canary step %d not applied: %s", rollout.pipeline, due + 1, exc.reason)
    close_question(ctx, rollout, pipeline)
    ctx.audit(
        actor="immune",
        action="canary.step",
        pipeline=rollout.pipeline,
        rollout=rollout.id,
        detail=f"step {due + 1}/{len(plan)}: " + describe(moved, rollout.version),
    )
    return moved


def close_question(ctx: Context, rollout: Rollout, pipeline: Pipeline) -> None:
    """The question a held step asked is settled (promoted, aborted, rolled back on a breach
    or by its policy): its message says so and loses its buttons, so nobody presses a
    question that no longer stands. `rollout` is the canary as it was while held."""
    split, traffic = rollout.traffic, pipeline.traffic
    if split is None or traffic is None or split.held_since is None or not rollout.canary_prompt_ts:
        return
    try:
        ctx.notifier.canary_held(rollout, [], 0.0, traffic.inconclusive)
    except Exception:
        logger.exception("could not update the canary question of %s", rollout.id)


def step_over(ctx: Context, rollout: Rollout, pipeline: Pipeline) -> bool:
    """Whether the canary's current step has lasted its `step_duration`."""
    split, traffic = rollout.traffic, pipeline.traffic
    if (
        split is None
        or traffic is None
        or rollout.live_at is None
        or not held_short(rollout, pipeline)
    ):
        return False
    return ctx.clock.now() - rollout.live_at >= (split.step + 1) * traffic.step_duration


def hold(ctx: Context, rollout: Rollout, pipeline: Pipeline, waiting: list[str]) -> bool:
    """The step is over but `waiting` KPIs could not be judged: the canary holds where it is
    and the channel is asked, once. True once `inconclusive_after` has passed with nobody
    answering: the pipeline's `inconclusive` policy decides."""
    split, traffic = rollout.traffic, pipeline.traffic
    assert split is not None and traffic is not None
    now = ctx.clock.now()
    if split.held_since is not None:
        return now >= split.held_since + traffic.decides_after
    held = split.model_copy(update={"held_since": now})

    current = _record(ctx, rollout.id, held, wait=False)
    ctx.audit(
        actor="immune",
        action="canary.hold",
        pipeline=rollout.pipeline,
        rollout=rollout.id,
        detail=f"step {split.step + 1}/{split.steps}: not enough data for {', '.join(waiting)}; "
        f"{traffic.inconclusive} after {traffic.decides_after:g}s",
    )
    try:
        ts = ctx.notifier.canary_held(
            current, waiting, now + traffic.decides_after, traffic.inconclusive
        )
    except Exception:
        logger.exception("could not ask about the held canary %s", rollout.id)
        return False
    if ts:
        ctx.runner.change(rollout.id, lambda r: setattr(r, "canary_prompt_ts", ts), wait=False)
    return False


def all_back(ctx: Context, split: TrafficSplit | None, pipeline: Pipeline) -> TrafficSplit | None:
    """On a breach: the split that sends every request to the baseline, when the rollout has
    one behind the proxy that still runs (listens on its port); else None. The watch records
    it with the breach itself, before the proxy is told (`send_back`)."""
    if split is None or pipeline.traffic is None:
        return None
    if split.baseline_port is None or split.baseline_retired:
        return None
    if not served(ctx, pipeline).target.listens(split.baseline_port):
        return None
    return split.model_copy(update={"percent": 0})


def send_back(ctx: Context, name: str, pipeline: Pipeline, back: TrafficSplit) -> bool:
    """Move every request to the baseline, as `all_back` planned (its port listens) and the
    breach recorded: the first thing a breach does after claiming. False when it could not."""
    try:
        served(ctx, pipeline).shift_to(pipeline, back)
    except TrafficError as exc:
        logger.error("%s: could not send traffic back: %s", name, exc.reason)
        return False
    return True


def move_now(ctx: Context, rollout: Rollout, pipeline: Pipeline) -> None:
    """A rollback accepted with its split (`way_back`) moves the requests in the ack, as soon
    as it is recorded: one round trip, then the step is recorded and the runner, finding it
    done, only puts the rest in order. Anything short of that (nothing listens there any more,
    the proxy refuses) is left to the runner's full path, which finds the version (starting it
    again if it died) or says why it cannot."""
    split = rollout.traffic
    if split is None:
        return
    began = ctx.clock.now()
    try:
        moved = served(ctx, pipeline).send_to(pipeline, split)
    except TrafficError as exc:
        logger.info(
            "%s: traffic not moved in the ack (%s); the runner's full path decides",
            rollout.pipeline,
            exc.reason,
        )
        return
    if not moved:
        return
    step = Step(
        name=MOVE_TRAFFIC,
        status=StepStatus.done,
        started_at=began,
        ended_at=ctx.clock.now(),
        detail=describe(split, rollout.version),
    )
    ctx.store.update_rollout(rollout.id, lambda r: r.steps.append(step))


def running_baseline(live: Rollout | None, pipeline: Pipeline, version: str) -> TrafficSplit | None:
    """The live rollout's split when `version` is its baseline and, by Redis, still runs
    behind the proxy (not retired); else None."""
    if pipeline.traffic is None or live is None or live.traffic is None:
        return None
    split = live.traffic
    if split.baseline_port is None or split.baseline_retired or split.baseline_version != version:
        return None
    return split


def way_back(live: Rollout | None, pipeline: Pipeline, version: str) -> TrafficSplit | None:
    """The split of a rollback to `version` when it is the live rollout's running baseline:
    all requests to its port, the live version kept at weight 0 until it is drained like any
    baseline. Recorded with the rollback when it is accepted, which moves the requests at once
    (`move_now`); None when the full path must find the version (no proxy, another version,
    the baseline retired)."""
    split = running_baseline(live, pipeline, version)
    if split is None or split.baseline_port is None or live is None:
        return None
    return TrafficSplit(
        port=split.baseline_port,
        baseline_port=split.port,
        baseline_version=live.version,
        baseline_rollout=live.id,
        baseline_reference=live.reference,
    )


def retire_baseline(ctx: Context, rollout: Rollout, pipeline: Pipeline) -> None:
    """The watch ended well: drain and stop the baseline, off the scheduler's thread."""
    split = rollout.traffic
    if split is None or split.baseline_port is None or split.baseline_retired:
        return
    retired = split.model_copy(update={"baseline_retired": True})

    _record(ctx, rollout.id, retired, wait=False)

    def drain() -> None:
        try:
            served(ctx, pipeline).retire(rollout.pipeline, pipeline, split, None)
        except Exception:
            logger.exception("%s: could not retire %s", rollout.pipeline, split.baseline_version)

    threading.Thread(target=drain, name=f"drain-{rollout.id}", daemon=True).start()


def restore_routes(ctx: Context, names: list[str] | None = None) -> list[str]:
    """Put the recorded routes back where the proxy lost them (it restarted); returns the
    pipelines whose routes were restored. Pipelines with a rollout in flight are left to it.
    Redis is read once for all of them: the job runs every 2 s on every replica, and each watch
    poll of a pipeline behind a proxy runs it too."""
    restored = []
    candidates = names if names is not None else sorted(ctx.config.pipelines)
    behind = [name for name in candidates if ctx.config.pipelines[name].traffic is not None]
    snapshots = ctx.store.pipeline_snapshots(behind)
    for name in behind:
        pipeline = ctx.config.pipelines[name]
        assert pipeline.traffic is not None
        snapshot = snapshots[name]
        if snapshot.state.inflight_rollout or not snapshot.state.live_rollout:
            continue
        rollout = snapshot.live
        if rollout is None or rollout.traffic is None:
            continue
        router = served(ctx, pipeline).router(pipeline)
        wanted = rollout.traffic.weights()
        try:
            if router.routes(pipeline.traffic) == wanted:
                continue
            router.route(pipeline.traffic, wanted)
        except TrafficError as exc:
            logger.warning("%s: the proxy's routes could not be checked: %s", name, exc.reason)
            continue
        restored.append(name)
        detail = describe(rollout.traffic, rollout.version)
        logger.warning("%s: the proxy had lost its routes; restored %s", name, detail)
        if ctx.store.claim_once(Once.routes_restored, name):
            ctx.audit(actor="immune", action="traffic.restore", pipeline=name, detail=detail)
            ctx.notifier.routes_restored(
                pipeline.channel,
                name,
                say(
                    "{} had lost its routes (restarted?); put back: {}",
                    pipeline.traffic.proxy,
                    detail,
                ),
            )
    return restored
