"""Ack latency: the bot's slash-command acks against a bare slack-bolt app on the same server.

Both are served by `bot.server.HttpServer` (waitress, the bot's thread count) in this
process; the load comes from another process (`bench.load`) over keep-alive connections.
The floor is a bolt app with one trivial command (`ack("ok")`), in each of bolt's modes.
A second floor does the Redis work a command cannot do without: the same bolt app whose
command first sends the very Redis commands the bot's ack of that request sends (recorded
from one ack before the load, the bot's client options), then acks.

Each run also reads this process's CPU time: the servers live here and the load does not,
so CPU per request says what one ack costs the server, load or not. The bot's background
jobs run throughout (a few ms of CPU a second); one row repeats a refusal with them paused.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import redis.connection
from slack_bolt import Ack, App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk import WebClient

from bench import botctl
from bench.load import LoadDriver
from bench.rig import BenchRig
from bench.stats import ratio, summarize
from bot.app import Immune
from bot.server import HttpServer, freeze_startup_heap
from bot.settings import Settings
from bot.store.connection import connect
from tests.support.bot_harness import BOT_TOKEN, SIGNING_SECRET, InProcessBot

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

logger = logging.getLogger(__name__)

BARE_MODES = {"default": False, "process_before_response": True}


@dataclass(frozen=True)
class AckProfile:
    concurrencies: tuple[int, ...]
    rounds: int
    duration: float
    warmup: float
    accepted_deploys: int


FULL = AckProfile(
    concurrencies=(1, 10, 50), rounds=3, duration=1.5, warmup=0.4, accepted_deploys=10
)
QUICK = AckProfile(
    concurrencies=(1, 10, 50), rounds=1, duration=1.0, warmup=0.3, accepted_deploys=3
)


@dataclass(frozen=True)
class RedisCommand:
    """One command as the bot's client was asked to send it (`execute_command`'s arguments)."""

    args: tuple[Any, ...]
    options: dict[str, Any]


class BareBolt:
    """A bolt app with one trivial command behind the bot's HttpServer (same WSGI routing);
    with `commands`, the command first sends those Redis commands, one round trip each, and
    with `then`, calls it before it acks."""

    def __init__(
        self,
        api_url: str,
        process_before_response: bool,
        redis_url: str | None = None,
        commands: Sequence[RedisCommand] = (),
        *,
        command: str = "/deploy",
        then: Callable[[], None] | None = None,
    ) -> None:
        app = App(
            signing_secret=SIGNING_SECRET,
            client=WebClient(token=BOT_TOKEN, base_url=api_url, timeout=10),
            process_before_response=process_before_response,
            token_verification_enabled=False,
            request_verification_enabled=True,
        )

        self.redis = connect(redis_url) if redis_url and commands else None
        store = self.redis

        def handle(ack: Ack) -> None:
            if store is not None:
                # The bot's own commands again: the claim's SET NX finds its key taken and the
                # answer's script appends one more audit entry, the same work either way.
                for sent in commands:
                    store.execute_command(*sent.args, **sent.options)
            if then is not None:
                then()
            ack("ok")

        app.command(command)(handle)
        self.handler = SlackRequestHandler(app, path="/slack/events")
        threads = Settings.model_fields["http_threads"].default
        # HttpServer only calls .wsgi() on what it serves.
        self.server = HttpServer(cast(Immune, self), "127.0.0.1", 0, threads=threads)
        self.server.start_in_thread()

    def wsgi(self) -> Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]:
        def application(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            if environ.get("PATH_INFO", "") == "/slack/events":
                return self.handler(environ, start_response)
            body = b"Not Found"
            start_response(
                "404 Not Found",
                [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
            )
            return [body]

        return application

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/slack/events"

    def close(self) -> None:
        self.server.close()
        if self.redis is not None:
            self.redis.close()


@dataclass(frozen=True)
class Target:
    label: str
    url: str
    cases: list[dict[str, str]]
    pause_jobs: bool = False
    """Run with the bot's scheduled jobs paused (the engine check, recovery, queue, views)."""
    same_as: str = ""
    """The request whose same-work floor this row is compared with (default: its own)."""

    @property
    def work(self) -> str:
        return self.same_as or self.label


def run(rig: BenchRig, profile: AckProfile) -> dict[str, Any]:
    """Bare bolt (both modes) and the bot, interleaved run by run, round after round.

    Interleaving spreads whatever else the machine does over the bot and its floor alike;
    each figure pools the samples of every round.
    """
    assert rig.emulator is not None and rig.images is not None
    driver = LoadDriver(SIGNING_SECRET, response_base=f"{rig.emulator.root_url}/response")
    bares: dict[str, BareBolt] = {}
    under_test: BotUnderTest | None = None
    try:
        for mode, pbr in BARE_MODES.items():
            bares[mode] = BareBolt(rig.emulator.base_url, pbr)
        under_test = _start_bot(rig)
        measured = [t for t in under_test.targets if not t.same_as]
        trips = {t.label: _round_trips(driver, t) for t in measured}
        assert rig.redis is not None
        for t in measured:
            commands = recorded_commands(driver, t)
            if len(commands) != round(trips[t.label]):
                raise AssertionError(
                    f"{t.label}: {len(commands)} commands recorded for {trips[t.label]} round "
                    "trips (a pipeline?): the same-work floor could not replay them"
                )
            if commands:
                bares[f"same:{t.label}"] = BareBolt(
                    rig.emulator.base_url, True, rig.redis.url, commands
                )
        trivial = [{"command": "/deploy", "text": "web 2", "expect": "ok"}]
        targets = [Target(f"bare:{mode}", b.url, trivial) for mode, b in bares.items()]
        targets += under_test.targets
        runs: dict[str, dict[int, list[dict[str, Any]]]] = {
            t.label: {c: [] for c in profile.concurrencies} for t in targets
        }
        engine = botctl.EngineCalls(under_test.bot)
        engine_calls: dict[str, list[int]] = {t.label: [0, 0] for t in targets}  # calls, sent
        scheduler = under_test.bot.immune.scheduler
        for round_ in range(profile.rounds):
            for c in profile.concurrencies:
                shift = round_ % len(targets)
                for target in targets[shift:] + targets[:shift]:
                    before = engine.count
                    if target.pause_jobs:
                        scheduler.pause()
                    cpu_before = time.process_time()
                    try:
                        result = driver.run(
                            target.url,
                            target.cases,
                            concurrency=c,
                            duration=profile.duration,
                            warmup=profile.warmup,
                            raw=True,
                        )
                    finally:
                        if target.pause_jobs:
                            scheduler.resume()
                    result["cpu_seconds"] = time.process_time() - cpu_before
                    logger.info(
                        "ack %s c=%s: p50 %s p99 %s", target.label, c, result["p50"], result["p99"]
                    )
                    runs[target.label][c].append(result)
                    engine_calls[target.label][0] += engine.count - before
                    engine_calls[target.label][1] += result["sent"]
        accepted = _accepted_deploys(under_test, driver, profile.accepted_deploys)
    finally:
        driver.close()
        for server in bares.values():
            server.close()
        if under_test is not None:
            under_test.close()
    pooled = {
        label: {c: _pool(results) for c, results in by_c.items()} for label, by_c in runs.items()
    }
    bare = {
        mode: {str(c): pooled[f"bare:{mode}"][c] for c in profile.concurrencies}
        for mode in BARE_MODES
    }
    same_work = {
        mode.split(":", 1)[1]: {str(c): pooled[f"bare:{mode}"][c] for c in profile.concurrencies}
        for mode in bares
        if mode.startswith("same:")
    }
    works = {t.label: t.work for t in under_test.targets}
    loads = {
        label: {str(c): figures for c, figures in by_c.items()}
        for label, by_c in pooled.items()
        if not label.startswith("bare:")
    }
    for label, by_c in loads.items():
        calls, sent = engine_calls[label]
        for figures in by_c.values():
            figures["engine_calls_per_request"] = calls / sent if sent else math.nan
            figures["redis_round_trips_per_request"] = trips[works[label]]
            figures["same_work"] = works[label]
    return _compare(bare, same_work, {"loads": loads, "accepted": accepted}, profile)


@contextlib.contextmanager
def _counting_round_trips() -> Iterator[list[int]]:
    """Redis round trips made on the HTTP server's threads (a pipeline's commands are one)."""
    count = [0]
    original: Callable[[Any, Any, bool], None] = (
        redis.connection.AbstractConnection.send_packed_command
    )

    def send(self: Any, command: Any, check_health: bool = True) -> None:
        if botctl.on_request_thread():
            count[0] += 1
        original(self, command, check_health)

    redis.connection.AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
    try:
        yield count
    finally:
        redis.connection.AbstractConnection.send_packed_command = original  # type: ignore[method-assign,assignment]


@contextlib.contextmanager
def recording_commands(
    until: Callable[[], bool] = lambda: False,
) -> Iterator[list[RedisCommand]]:
    """The commands the HTTP server's threads ask a Redis client to send (scripts included:
    they go through execute_command as EVALSHA; a pipeline's would not, and is not recorded),
    none once `until()` says so on the sending thread."""
    recorded: list[RedisCommand] = []
    original: Callable[..., Any] = redis.Redis.execute_command

    def execute(self: Any, *args: Any, **options: Any) -> Any:
        if botctl.on_request_thread() and not until():
            recorded.append(RedisCommand(args, dict(options)))
        return original(self, *args, **options)

    redis.Redis.execute_command = execute  # type: ignore[method-assign]
    try:
        yield recorded
    finally:
        redis.Redis.execute_command = original  # type: ignore[method-assign]


def recorded_commands(driver: LoadDriver, target: Target) -> list[RedisCommand]:
    """The Redis commands one ack of `target`'s request sends (after a first, which loads the
    scripts), for its same-work floor to send again."""
    case = target.cases[0]
    driver.one(target.url, case["command"], case["text"])
    with recording_commands() as recorded:
        answer = driver.one(target.url, case["command"], case["text"])
    if case["expect"] not in answer["text"]:
        raise AssertionError(f"{target.label}: unexpected answer {answer}")
    return list(recorded)


def _round_trips(driver: LoadDriver, target: Target, samples: int = 10) -> float:
    """The Redis round trips of one ack of `target`'s request, one request at a time."""
    case = target.cases[0]
    driver.one(target.url, case["command"], case["text"])  # scripts loaded, connections made
    with _counting_round_trips() as count:
        for _ in range(samples):
            answer = driver.one(target.url, case["command"], case["text"])
            if case["expect"] not in answer["text"]:
                raise AssertionError(f"{target.label}: unexpected answer {answer}")
    return count[0] / samples


def _pool(results: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [x for r in results for x in r["latencies"]]
    window = sum(r["window_seconds"] for r in results)
    samples = [s for r in results for s in r["error_samples"]][:3]
    sent = sum(r["sent"] for r in results)
    cpu = sum(r.get("cpu_seconds", math.nan) for r in results)
    return {
        **summarize(latencies),
        "errors": sum(r["errors"] for r in results),
        "error_samples": samples,
        "throughput": len(latencies) / window if window else 0.0,
        "runs": len(results),
        # Warm-up included on both sides: every request sent against the whole run's CPU.
        "cpu_per_request": cpu / sent if sent else math.nan,
    }


@dataclass
class BotUnderTest:
    bot: InProcessBot
    url: str
    targets: list[Target]
    accept: str
    """The pipeline that takes real deploys."""
    busy: str
    holder: str
    """The rollout held in flight on `busy`."""

    def close(self) -> None:
        self.bot.ctx.store.release_rollout(self.busy, self.holder)
        self.bot.stop()
        gc.unfreeze()  # what _start_bot froze may be collected again (the next section's)


def _start_bot(rig: BenchRig) -> BotUnderTest:
    """The bot with three pipelines: one live (1), one busy (a rollout in flight), one to deploy."""
    assert rig.images is not None
    live, _, live_config = botctl.pipeline(rig, "live")
    busy, _, busy_config = botctl.pipeline(rig, "busy")
    accept, _, accept_config = botctl.pipeline(rig, "accept")
    bot = botctl.start_bot(
        rig, {live: live_config, busy: busy_config, accept: accept_config}, "ack"
    )
    try:
        botctl.deploy_and_wait(bot, live, "1")
        botctl.deploy_and_wait(bot, accept, "1")
        holder = botctl.hold_in_flight(bot.ctx.store, busy, rig.images.repo, "2")
    except BaseException:
        bot.stop()
        raise
    freeze_startup_heap()  # as `python -m bot` does once started
    url = bot.url + "/slack/events"
    already_live = [{"command": "/deploy", "text": f"{live} 1", "expect": "already live"}]
    targets = [
        Target("/pipeline", url, [{"command": "/pipeline", "text": "", "expect": live}]),
        Target("/pipeline <name>", url, [{"command": "/pipeline", "text": live, "expect": live}]),
        Target("/deploy refused: already live", url, already_live),
        Target(
            "/deploy refused: rollout in flight",
            url,
            [{"command": "/deploy", "text": f"{busy} 2", "expect": "in flight"}],
        ),
        Target(
            "/deploy refused: already live, background jobs paused",
            url,
            already_live,
            pause_jobs=True,
            same_as="/deploy refused: already live",
        ),
    ]
    return BotUnderTest(bot, url, targets, accept, busy, holder.id)


def _accepted_deploys(under_test: BotUnderTest, driver: LoadDriver, count: int) -> dict[str, Any]:
    """Real deploys, one at a time (one rollout per pipeline): each ack, then the rollout."""
    store = under_test.bot.ctx.store
    latencies, outcomes = [], []
    for index in range(count):
        version = "2" if index % 2 == 0 else "1"
        botctl.wait_unlocked(store, under_test.accept)
        answer = driver.one(under_test.url, "/deploy", f"{under_test.accept} {version}")
        if answer["status"] != 200 or "Deploying" not in answer["text"]:
            raise AssertionError(f"deploy {version} was not accepted: {answer}")
        latencies.append(answer["latency"])
        rollout = botctl.wait_for_rollout(store, botctl.rollout_id_in(answer["text"]))
        outcomes.append(rollout.status.value)
    return {**summarize(latencies), "outcomes": outcomes, "concurrency": 1}


def _compare(
    bare: dict[str, dict[str, Any]],
    same_work: dict[str, dict[str, Any]],
    bot: dict[str, Any],
    profile: AckProfile,
) -> dict[str, Any]:
    floors: dict[str, dict[str, Any]] = {}
    for c in map(str, profile.concurrencies):
        faster = min(BARE_MODES, key=lambda mode: bare[mode][c]["p99"])
        floors[c] = {"mode": faster, "p50": bare[faster][c]["p50"], "p99": bare[faster][c]["p99"]}
    rows = []
    for label, by_c in bot["loads"].items():
        for c, figures in by_c.items():
            trips = figures["redis_round_trips_per_request"]
            work = same_work.get(figures["same_work"], {}).get(c)
            rows.append(
                {
                    "endpoint": label,
                    "concurrency": int(c),
                    **{k: figures[k] for k in ("n", "p50", "p99", "max", "throughput", "errors")},
                    "error_samples": figures["error_samples"],
                    "engine_calls_per_request": figures["engine_calls_per_request"],
                    "redis_round_trips_per_request": trips,
                    "cpu_per_request": figures["cpu_per_request"],
                    "floor_cpu_per_request": bare[floors[c]["mode"]][c]["cpu_per_request"],
                    "same_work_p99": work["p99"] if work else None,
                    "same_work_cpu_per_request": work["cpu_per_request"] if work else None,
                    "ratio_p99_same_work": ratio(figures["p99"], work["p99"]) if work else None,
                    "floor_mode": floors[c]["mode"],
                    "floor_p50": floors[c]["p50"],
                    "floor_p99": floors[c]["p99"],
                    "ratio_p50": ratio(figures["p50"], floors[c]["p50"]),
                    "ratio_p99": ratio(figures["p99"], floors[c]["p99"]),
                }
            )
    accepted = bot["accepted"]
    rows.append(
        {
            "endpoint": "/deploy accepted (real rollout, one at a time)",
            "concurrency": 1,
            **{k: accepted[k] for k in ("n", "p50", "p99", "max")},
            "throughput": None,
            "errors": 0,
            "error_samples": [],
            "outcomes": accepted["outcomes"],
            "engine_calls_per_request": None,
            "floor_mode": floors["1"]["mode"],
            "floor_p50": floors["1"]["p50"],
            "floor_p99": floors["1"]["p99"],
            "ratio_p50": ratio(accepted["p50"], floors["1"]["p50"]),
            "ratio_p99": ratio(accepted["p99"], floors["1"]["p99"]),
        }
    )
    return {
        "method": (
            "closed-loop load from a separate process; one keep-alive http.client connection per "
            f"client thread; runs of {profile.warmup:g} s warm-up + {profile.duration:g} s "
            f"measured, bare bolt and bot interleaved, {profile.rounds} round(s) pooled; every "
            "request signed like Slack's with a fresh trigger_id; bot and bare bolt both behind "
            "bot.server.HttpServer (waitress, same thread count) in the bench process"
        ),
        "bare": bare,
        "same_work": same_work,
        "floor": floors,
        "rows": rows,
        "target": {
            "ratio_p99_max": 1.3,
            "against": "the faster bare-bolt mode at each concurrency",
        },
    }
