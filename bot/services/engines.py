"""The engine job: each replica pings the engines its pipelines deploy to, every second.

When an engine stops answering, the first replica to find it (a SET NX in Redis) tells each
affected pipeline's channel once; deploys are refused and KPI polls paused meanwhile (each
replica from its own pings, `Context.engines`). When it answers again, the one replica that
takes the outage's mark (GETDEL) tells the channels once more, lengthens the paused watches by
the outage, and makes the engine run only the version Redis records as live: an engine that
restarts starts containers again by their `restart` policies, old versions included.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping

from bot.domain.config import Pipeline
from bot.domain.text import Moment, Text, join, say
from bot.ports import Target
from bot.services.context import Context
from bot.store.keys import Once

logger = logging.getLogger(__name__)

ENGINE_CHECK_SECONDS = 1.0


def check_engines(ctx: Context, targets: Mapping[str, Target]) -> None:
    """The scheduler job: ping each engine in use; handle it going away or coming back."""
    for engine, target in targets.items():
        pipelines = {n: p for n, p in ctx.config.pipelines.items() if p.target == engine}
        if not pipelines:
            continue
        try:
            check_engine(ctx, engine, target, pipelines)
        except Exception:
            # Redis away fails every check: logged once until a check works again.
            if ctx.engines.check_failed(engine):
                logger.exception("could not check the %s engine", engine)
        else:
            ctx.engines.check_worked(engine)


def check_engine(
    ctx: Context, engine: str, target: Target, pipelines: Mapping[str, Pipeline]
) -> None:
    now = ctx.clock.now()
    report = target.health()
    if not report.get("ok"):
        since = ctx.engines.found_down(engine, now)
        if since == now:
            logger.warning("the %s engine does not answer: %s", engine, report.get("error", ""))
        if ctx.store.mark_engine_down(engine, since):
            _went_away(ctx, engine, pipelines, since)
        return
    down_since = ctx.store.engine_down_since(engine)
    if down_since is None:
        if ctx.engines.found_up(engine) is not None:
            logger.warning("the %s engine answers again", engine)
        return
    # Back, and not handled yet: one replica reconciles; every replica stays paused (refusing
    # deploys, skipping polls) until it is done and the outage's mark is gone.
    ctx.engines.found_down(engine, down_since)
    claim = f"{engine}:{down_since!r}"
    if ctx.store.claim_once(Once.engine_back, claim):
        try:
            _came_back(ctx, engine, pipelines, down_since)
        except Exception:
            ctx.store.release_once(Once.engine_back, claim)  # the next ping tries again
            raise
        ctx.store.clear_engine_down(engine)
        ctx.engines.found_up(engine)


def _by_channel(pipelines: Mapping[str, Pipeline]) -> dict[str, list[str]]:
    channels: dict[str, list[str]] = defaultdict(list)
    for name, pipeline in sorted(pipelines.items()):
        channels[pipeline.channel].append(name)
    return channels


def _names(names: list[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)


def _went_away(ctx: Context, engine: str, pipelines: Mapping[str, Pipeline], since: float) -> None:
    for name in pipelines:
        ctx.audit(actor="immune", action="engine.unreachable", pipeline=name, detail=engine)
    for channel, names in _by_channel(pipelines).items():
        text = say(
            "The `{}` engine that {} deploys to does not answer (since {}). Meanwhile deploys "
            "and rollbacks are refused, KPI polls are paused (not judged), and a rollout in "
            "flight waits for the engine. I will say when it is back.",
            engine,
            _names(names),
            Moment(since),
        )
        _tell(ctx, channel, names, text)


def _came_back(ctx: Context, engine: str, pipelines: Mapping[str, Pipeline], since: float) -> None:
    logger.warning(
        "the %s engine is back after %.1fs: reconciling", engine, ctx.clock.now() - since
    )
    said: dict[str, Text] = {}
    for name, pipeline in pipelines.items():
        done: list[str] = []
        state = ctx.store.pipeline(name)
        if state.inflight_rollout:
            # Its runner waits for the engine and finishes or undoes the swap itself.
            done.append(f"its rollout {state.inflight_rollout} carries on")
        else:
            try:
                corrected = ctx.target(pipeline).reconcile(name, pipeline, state.live_version)
                if not corrected and state.live_version:
                    corrected = [f"nothing to correct (`{state.live_version}` is live)"]
                done += corrected
            except Exception:
                logger.exception("%s: could not reconcile with the engine after it came back", name)
                done.append("I could not check what the engine runs: see the bot's log")
        # After the reconciliation: the warm-up it adds starts once the version serves again.
        back_at = ctx.clock.now()
        for watch in ctx.store.watches().values():
            if watch.pipeline == name and ctx.store.replace_watch(
                watch.after_outage(since, back_at)
            ):
                done.append("its watch goes on, the paused polls added to its end")
        ctx.audit(
            actor="immune",
            action="engine.back",
            pipeline=name,
            outcome="reconciled",
            detail=f"{engine} after {back_at - since:.0f}s" + "".join(f"; {d}" for d in done),
        )
        said[name] = say("`{}`: {}.", name, "; ".join(done) if done else "nothing to do")
    for channel, names in _by_channel(pipelines).items():
        text = (
            say(
                "The `{}` engine answers again, after {}s without it.",
                engine,
                f"{ctx.clock.now() - since:.0f}",
            )
            + "\n"
            + join([said[name] for name in names])
        )
        _tell(ctx, channel, names, text)


def _tell(ctx: Context, channel: str, names: list[str], text: Text) -> None:
    try:
        ctx.notifier.engine_changed(channel, names, text)
    except Exception:
        logger.exception("could not tell %s about the engine", channel)
