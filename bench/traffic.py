"""Traffic: deploys and rollbacks behind HAProxy against today's swap on one port (issue 11).

One real HAProxy, run with the config `python -m bot proxy-config` prints (the tests'
`HAProxyServer`), serves four backends on loopback: `bg` and `trip` (blue/green pipelines),
`canary` (steps 5, 50, 100) and `floor` (two demo containers the bench runs by hand; the bot
does not know it). Prometheus scrapes HAProxy's exporter, so the watch judges each version
from the proxy's own metrics. A fifth pipeline, `direct`, has no `traffic:` block: today's
stop-then-start swap on one port, its KPI read from the demo's own /metrics. All share one bot
(`bot.app.build` in this process, real Redis, dockerd and Prometheus, the emulated Slack).

1. Lost requests. A steady load of 100 GET / per second (`tests.support.load`, bounded in count
   and time) through `traffic.listen`, or to the direct pipeline's port, while `/deploy <p> 2`
   goes live and then `/rollback <p> 1` (during the watch) finishes. The deploy's window runs
   from the command to the rollback's command, the rollback's from its command to half a
   second after it finished.
2. Rollback time on the traffic path, seen by the probe (`bench.probe`, a process of its own:
   GET / through the listen address from 4 connections, one request every 1 ms in all, until
   the last 10 answers in the order sent name the old version; the figure ends when the first
   of them was sent, an upper bound: the last request the new version answered is a lower
   one). From the signed `/rollback bg 1` while 2 is watched, sent from a client process of
   its own as the ack bench sends its requests (`bench.load`): the whole path (Slack's request
   and its signature, the exactly-once claim with the pipeline's state, then the pipeline's
   lock, the rollout recorded and audited (2 Redis round trips; the baseline's image is the
   one its split keeps), then, still inside the ack, one runtime-API round trip); and the
   same samples from the rollout's acceptance (its
   `created_at`, the bot's decision, as for a breach). From the breach decision
   (the rollout's `finished_at`, set when the watch marks it rolled_back): `trip`'s KPI is
   the new version's answers per second (max 5), so demo 2 under the steady load trips it and
   both versions answer fast (a real bad version's CGI answers too slowly for the probe to see
   the switch; it is part 3); the load stops 0.2 s before the poll that breaches, when the
   probe starts (the KPI's window holds the load already). Both paths again with every Slack
   call taking 200 ms. Floor, sampled between the bot's /rollback samples: one bare
   runtime-API line `set server floor/v<old> weight 100; set server floor/v<new> weight 0`
   (one connection, one round trip), then the same probe on the floor's listen address. For
   reference, the bot's own `HAProxyRouter.shift` on the floor backend (the same two
   weights and `show servers state` that proves them, one round trip), and the same probe.
   And the same work without the bot: a bare bolt app (the ack bench's, behind the same
   HttpServer) whose `/rollback`, signed and sent as the bot's is, sends the Redis commands
   the bot's ack sent before it moved the requests (recorded from its first sample), then the
   floor's line; timed by the same probe from the same client. Its commands go to a scratch
   database of the same Redis (scripts are cached server-wide, so they run as they ran),
   holding the pipeline's state as it was when the bot's were recorded (DUMP, then RESTORE
   before each request). And the stack alone: the same bare bolt app sending no Redis command,
   then the floor's line: what any bolt app behind this HTTP server pays from Slack's request
   before it could move anything.
3. A bad version (demo tag 3: every other GET / answers 500) deployed to the canary pipeline,
   caught at its 5% step, against the same version deployed to `direct` and rolled back by the
   watch; both with the same watch and threshold, at 100 req/s. Failed requests from the
   /deploy to half a second after the automatic rollback finished.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import docker.errors

from bench import botctl
from bench.ack import BareBolt, RedisCommand, recording_commands
from bench.load import LoadDriver
from bench.observe import wait_for_version
from bench.probe import CLIENTS, PACE_SECONDS, ProbeDriver
from bench.rig import RUN_LABEL, BenchRig
from bench.stats import median, ratio, summarize
from bot.domain.config import Pipeline, Traffic
from bot.domain.models import Rollout, RolloutKind, RolloutStatus
from bot.server import freeze_startup_heap
from bot.store.connection import connect
from bot.store.store import Store
from bot.targets.docker_host import LABEL_PIPELINE
from bot.targets.hardening import container_options
from bot.traffic.haproxy import HAProxyRouter
from tests.support.bot_harness import CHANNEL, SIGNING_SECRET, InProcessBot, docker_pipeline
from tests.support.load import Response, steady_load
from tests.support.services import HAProxyServer

logger = logging.getLogger(__name__)

RATE = 100.0
"""Requests per second of the steady load (parts 1 and 3)."""
LOAD_BOUND_SECONDS = 40.0
LEAD_SECONDS = 0.5  # load before the first command: a baseline that must lose nothing
SETTLE_SECONDS = 0.5
WATCH_INTERVAL_SECONDS = 1.0
WARMUP_POLLS = 1
FOR_POLLS = 2
KPI_MAX = 0.2
KPI_WINDOW_SECONDS = 3.0
DRAIN = "500ms"
CANARY_WATCH = "3s"
TRIP_KPI = "served"
TRIP_MAX = 5.0
TRIP_QUERY = (
    'sum(rate(haproxy_server_http_responses_total{{version},code="2xx"}'
    f"[{KPI_WINDOW_SECONDS:g}s]))"
)
"""The trip pipeline's KPI: the new version's answers per second. Any version under the
steady load breaches it, so a breach comes with two fast versions (no CGI answers hold the
probe up); the real bad version is part 3."""
PORTS = 24
"""Ports per pipeline behind the proxy: more than the two versions a swap runs at once. (Set
when a port a stopped version served on looked taken for a minute, its TIME_WAIT sockets
holding the probe's bind; since e235b4c `port_taken` binds with SO_REUSEADDR and such a port
is free at once. Kept, so runs stay comparable.)"""
CANARY_STEPS = [5, 50, 100]
CONSECUTIVE = 10
"""Answers in a row from the old version that end a probe."""
PROBE_LEAD_SECONDS = 0.2  # the probe starts this long before the poll that will breach
TARGET_RATIO = 10.0
TARGET_SECONDS = 0.05
TARGET_BAD_SHARE = 0.05
SCRATCH_DB = 1
"""The Redis database the same-work app's commands go to (the bot's is 0)."""


@dataclass(frozen=True)
class TrafficProfile:
    swap_cycles: int  # deploy + rollback under load, per pipeline
    rollback_samples: int  # /rollback on the traffic path
    floor_flips: int  # per /rollback sample, for the floor and for the router each
    breach_samples: int
    bad_runs: int  # per pipeline (canary and direct)
    slow_slack_samples: int  # a /rollback and a breach, every Slack call taking 200 ms


# The floor is a probe's 1 ms tick over a sub-millisecond change: its p50 over 14 flips moved
# between 0.23 and 0.60 ms from run to run, and every goal's ratio with it (2026-12-07). The
# breach path is a goal's too: with 3 samples its p99 was its maximum, 7.9x the floor in one
# run and 10.6x in the next.
FULL = TrafficProfile(
    swap_cycles=2,
    rollback_samples=15,
    floor_flips=3,
    breach_samples=7,
    bad_runs=2,
    slow_slack_samples=1,
)
QUICK = TrafficProfile(
    swap_cycles=1,
    rollback_samples=3,
    floor_flips=2,
    breach_samples=1,
    bad_runs=1,
    slow_slack_samples=1,
)
SLACK_LATENCY_SECONDS = 0.2
SLOW_METHODS = ("chat.update", "chat.postMessage")


@dataclass(frozen=True)
class Served:
    """A pipeline under test: its name and where its clients send requests."""

    name: str
    port: int


def run(rig: BenchRig, profile: TrafficProfile) -> dict[str, Any]:
    assert rig.images is not None and rig.prometheus is not None and rig.emulator is not None
    haproxy = HAProxyServer(rig.workdir / "haproxy")
    probe: ProbeDriver | None = None
    slack: LoadDriver | None = None
    floor: Floor | None = None
    bot: InProcessBot | None = None
    names = {what: rig.name(f"tr-{what}") for what in ("bg", "trip", "canary", "direct")}
    try:
        blocks = {
            names["bg"]: haproxy.traffic_block(
                "bg", ports=PORTS, strategy="blue_green", drain=DRAIN
            ),
            names["trip"]: haproxy.traffic_block(
                "trip", ports=PORTS, strategy="blue_green", drain=DRAIN
            ),
            names["canary"]: haproxy.traffic_block(
                "canary",
                ports=PORTS,
                strategy="canary",
                steps=CANARY_STEPS,
                step_duration="60s",
                drain=DRAIN,
            ),
            "floor": haproxy.traffic_block("floor", ports=2),
        }
        traffics = haproxy.serve(blocks)
        rig.scrape({"pipeline": rig.name("tr-haproxy")}, haproxy.port, rig.name("tr-haproxy"))
        direct_port = rig.free_port()
        rig.scrape({"pipeline": names["direct"]}, direct_port, names["direct"])
        for backend in ("bg", "trip", "canary"):
            rig.prometheus.wait_for_series(
                f'haproxy_server_http_responses_total{{proxy="{backend}"}}', timeout=20
            )
        pipelines = {
            names["bg"]: _behind_proxy(rig, names["bg"], blocks[names["bg"]]),
            names["trip"]: _behind_proxy(
                rig,
                names["trip"],
                blocks[names["trip"]],
                kpi=_kpi(TRIP_KPI, TRIP_MAX, query=TRIP_QUERY),
            ),
            # A short watch: its first version must become the last good one, the version the
            # watch rolls back to (a canary's own watch is its steps, then this).
            names["canary"]: _behind_proxy(
                rig, names["canary"], blocks[names["canary"]], watch=CANARY_WATCH
            ),
            names["direct"]: docker_pipeline(
                image=rig.images.repo,
                container_name=names["direct"],
                port=direct_port,
                watch=_watch(),
                kpis=[_kpi(query=_direct_query(names["direct"]))],
            ),
        }
        bg = Served(names["bg"], traffics[names["bg"]].listen_address[1])
        trip = Served(names["trip"], traffics[names["trip"]].listen_address[1])
        canary = Served(names["canary"], traffics[names["canary"]].listen_address[1])
        direct = Served(names["direct"], direct_port)
        probe = ProbeDriver()
        floor = Floor(rig, traffics["floor"], probe)
        bot = botctl.start_bot(rig, pipelines, "traffic")
        freeze_startup_heap()  # as `python -m bot` does once started
        for served in (bg, trip, canary, direct):
            botctl.deploy_and_wait(bot, served.name, "1", statuses=(RolloutStatus.live,))
        _last_good(bot, trip)
        swaps: dict[str, list[dict[str, Any]]] = {"bg": [], "direct": []}
        for _ in range(profile.swap_cycles):
            swaps["bg"].append(_swap_cycle(bot, bg))
            swaps["direct"].append(_swap_cycle(bot, direct))
        first = bot.ctx.store.pipeline(canary.name).live_rollout
        if botctl.wait_for_rollout(bot.ctx.store, first).status is not RolloutStatus.good:
            raise AssertionError("the canary pipeline's first version did not pass its watch")
        slack = LoadDriver(SIGNING_SECRET, response_base=f"{rig.emulator.root_url}/response")
        timing = _rollback_timing(rig, bot, bg, floor, probe, slack, profile)
        breaches = [_breach_sample(bot, trip, probe) for _ in range(profile.breach_samples)]
        slow = _slow_slack(rig, bot, bg, trip, probe, slack, profile.slow_slack_samples)
        bad: dict[str, list[dict[str, Any]]] = {"canary": [], "direct": []}
        for _ in range(profile.bad_runs):
            bad["canary"].append(_bad_version_run(bot, canary))
            bad["direct"].append(_bad_version_run(bot, direct))
        floor_bare, floor_router = list(floor.bare), list(floor.router)
        same_work = dict(floor.same_work)
    finally:
        if rig.emulator is not None:
            for method in SLOW_METHODS:
                rig.emulator.set_latency(method, 0)
        if bot is not None:
            bot.stop()
            gc.unfreeze()  # what start-up froze may be collected again (the next section's)
        if probe is not None:
            probe.close()
        if slack is not None:
            slack.close()
        if floor is not None:
            floor.close()
        haproxy.close()
        _remove_containers(rig, set(names.values()))
        for scraped in (rig.name("tr-haproxy"), names["direct"]):
            rig.prometheus.set_targets({}, [], name=scraped)
    return _result(swaps, timing, breaches, slow, bad, floor_bare, floor_router, same_work)


# The pipelines -----------------------------------------------------------------------------


def _watch(duration: str = "10m") -> dict[str, Any]:
    """Long by default, so a rollback comes during the watch: the old version still runs."""
    return {
        "interval": f"{WATCH_INTERVAL_SECONDS:g}s",
        "duration": duration,
        "warmup": WARMUP_POLLS,
    }


def _kpi(name: str = "errors", limit: float = KPI_MAX, **source: str) -> dict[str, Any]:
    return {
        "name": name,
        **source,
        "max": limit,
        "for": FOR_POLLS,
        "no_data": "ignore",  # no requests between measurements: nothing to judge
    }


def _direct_query(name: str) -> str:
    """The direct pipeline's error rate from the demo's own /metrics, over the same window."""
    selector = f'job="web",pipeline="{name}"'
    window = f"{KPI_WINDOW_SECONDS:g}s"
    return (
        f'sum(rate(http_requests_total{{{selector},code=~"5.."}}[{window}])) '
        f"/ sum(rate(http_requests_total{{{selector}}}[{window}]))"
    )


def _behind_proxy(
    rig: BenchRig,
    name: str,
    block: dict[str, Any],
    watch: str = "10m",
    kpi: dict[str, Any] | None = None,
) -> dict[str, Any]:
    assert rig.images is not None
    return {
        "channel": CHANNEL,
        "target": "docker",
        "image": rig.images.repo,
        "container": {"name": name, "network_mode": "host"},
        "health": {
            "url": "http://127.0.0.1:{port}/healthz",
            "timeout": "10s",
            "interval": "100ms",
        },
        "traffic": block,
        "watch": _watch(watch),
        "kpis": [kpi or _kpi(builtin="error_rate", window=f"{KPI_WINDOW_SECONDS:g}s")],
    }


def _remove_containers(rig: BenchRig, pipelines: set[str]) -> None:
    """The containers the bot made for these pipelines (the rig's clean-up is the backstop)."""
    if rig.docker is None:
        return
    for info in rig.docker.api.containers(all=True):
        if (info.get("Labels") or {}).get(LABEL_PIPELINE) in pipelines:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                rig.docker.api.remove_container(info["Id"], force=True, v=True)


# The floor ---------------------------------------------------------------------------------


def runtime_api_line(path: str, commands: Sequence[str], timeout: float = 2.0) -> list[str]:
    """One line of commands to HAProxy's runtime API on a unix socket: one connection, one
    round trip. Returns the non-empty answers (`set server … weight` answers nothing)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(("; ".join(commands) + "\n").encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return [line for line in b"".join(chunks).decode().splitlines() if line.strip()]


class Floor:
    """Demo 1 and 2 on the floor backend's two ports, run by hand; traffic moved between them
    by a bare runtime-API line, or by the bot's router, each timed with the probe."""

    def __init__(self, rig: BenchRig, traffic: Traffic, probe: ProbeDriver) -> None:
        assert rig.docker is not None and rig.images is not None
        self.traffic = traffic
        self.probe = probe
        self.api = rig.docker.api
        self.listen = traffic.listen_address[1]
        first = traffic.ports.first
        self.ports = {"1": first, "2": first + 1}
        self.serving = "2"
        self.bare: list[dict[str, float]] = []
        self.router: list[dict[str, float]] = []
        # Bare bolt's samples by how many Redis commands its /rollback sent first.
        self.same_work: dict[int, list[dict[str, float]]] = {}
        self.ids: list[str] = []
        try:
            for version, port in self.ports.items():
                options = container_options(
                    Pipeline.model_validate(
                        docker_pipeline(image=rig.images.repo, container_name="floor", port=port)
                    )
                )
                container = rig.docker.containers.create(
                    rig.images.ref(version),
                    labels={RUN_LABEL: rig.id},
                    detach=True,
                    **{**options, "name": rig.name(f"tr-floor-{version}")},
                )
                self.ids.append(container.id)
                container.start()
                wait_for_version(port, version)
            HAProxyRouter().route(traffic, {self.ports["2"]: 100, self.ports["1"]: 0})
            wait_for_version(self.listen, "2")
        except BaseException:
            self.close()
            raise

    def _flip(self, move: Callable[[str, str], float | None]) -> dict[str, float]:
        """Time `move` (old, new): from its call, or from when it says it began."""
        old, new = ("1", "2") if self.serving == "2" else ("2", "1")
        first = self.probe.start(self.listen, old, consecutive=CONSECUTIVE, timeout=10)
        if first != self.serving:
            raise AssertionError(f"the floor backend answered {first}, not {self.serving}")
        began = time.time()
        began = move(old, new) or began
        seen = self.probe.result()
        self.serving = old
        return {
            "seconds": float(seen["switched_at"]) - began,
            "lower": max(0.0, float(seen["last_other_sent_at"] or began) - began),
        }

    def weights_line(self, old: str, new: str) -> list[str]:
        """The floor's runtime-API line: every request to `old`."""
        backend = self.traffic.backend
        return [
            f"set server {backend}/v{self.ports[old]} weight 100",
            f"set server {backend}/v{self.ports[new]} weight 0",
        ]

    def send_line(self, line: list[str]) -> None:
        answers = runtime_api_line(self.traffic.runtime_api, line)
        if answers:
            raise AssertionError(f"HAProxy refused the floor's weights: {answers}")

    def sample_bare(self) -> None:
        def move(old: str, new: str) -> None:
            self.send_line(self.weights_line(old, new))

        self.bare.append(self._flip(move))

    def sample_same_work(self, same: SameWork, slack: LoadDriver) -> None:
        def move(old: str, new: str) -> float:
            same.prepare(self.weights_line(old, new))
            return same.send(slack)

        self.same_work.setdefault(len(same.commands), []).append(self._flip(move))
        same.check_replayed()

    def sample_router(self) -> None:
        router = HAProxyRouter()

        def move(old: str, new: str) -> None:
            # The bot's way back to a version that still runs (BehindProxy.send_to).
            if not router.shift(self.traffic, {self.ports[old]: 100, self.ports[new]: 0}):
                raise AssertionError("the floor backend's slots did not both serve")

        self.router.append(self._flip(move))

    def close(self) -> None:
        for container_id in self.ids:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                self.api.remove_container(container_id, force=True)


class SameWork:
    """What the bot's `/rollback` ack must do before the requests move, without the bot: a
    bare bolt app whose `/rollback` sends `commands` (the bot's, recorded) to a scratch
    database holding `seed` (the keys they read, as they were), then the floor's line. With
    no commands it is the stack alone: Slack's request through the HTTP server and bolt's
    dispatch to the floor's line, what any bolt app pays before it can move anything."""

    def __init__(
        self, rig: BenchRig, floor: Floor, commands: list[RedisCommand], seed: dict[str, bytes]
    ) -> None:
        assert rig.redis is not None and rig.emulator is not None
        url = rig.redis.url.rsplit("/", 1)[0] + f"/{SCRATCH_DB}"
        self.commands = commands
        self.seed = seed
        self.line: list[str] = []
        self.scratch = connect(url)
        self.app = BareBolt(
            rig.emulator.base_url,
            True,
            url,
            commands,
            command="/rollback",
            then=lambda: self._move(floor),
        )

    @property
    def url(self) -> str:
        return self.app.url

    def warm(self, slack: LoadDriver) -> None:
        """Open the client's connection before the first sample: the load process warms a
        new connection with a `help` request, which this app's one command would answer by
        moving the requests before the timed request was sent (the first sample came out
        at -0.8 to -1.0 ms)."""
        self.send(slack)

    def send(self, slack: LoadDriver) -> float:
        """Slack's `/rollback` to the app, its answer checked; when it was sent."""
        reply = slack.one(self.url, "/rollback", "floor 1")
        if reply["status"] != 200 or reply["text"] != "ok":
            raise AssertionError(f"same work: HTTP {reply['status']} {reply['text']!r}")
        return float(reply["sent_at"])

    def prepare(self, line: list[str]) -> None:
        """The scratch database as the bot's commands found it; `line` for the next request."""
        self.scratch.flushdb()
        for key, dumped in self.seed.items():
            self.scratch.restore(key, 0, dumped, replace=True)
        self.line = line

    def _move(self, floor: Floor) -> None:
        """The floor's line, once per `prepare`: a request without one moves nothing."""
        line, self.line = self.line, []
        if line:
            floor.send_line(line)

    def check_replayed(self) -> None:
        """The commands did the bot's work: its claim and its rollout's lock, record and audit
        entry are written beside the seed (replayed on a database without the seed, or
        refused, they would write nothing and cost less)."""
        written = self.scratch.dbsize() - len(self.seed)
        if written < len(self.commands):
            raise AssertionError(f"same work: {len(self.commands)} commands wrote {written} keys")

    def close(self) -> None:
        self.app.close()
        self.scratch.flushdb()
        self.scratch.close()


@contextlib.contextmanager
def _commands_before_the_move() -> Iterator[list[RedisCommand]]:
    """The Redis commands the HTTP server's threads send until one of them asks the proxy to
    move requests (`HAProxyRouter.shift`): what a `/rollback` ack does before the move."""
    moved = threading.local()
    shift: Callable[..., bool] = HAProxyRouter.shift

    def shifting(self: Any, *args: Any, **kwargs: Any) -> bool:
        if botctl.on_request_thread():
            moved.done = True
        return shift(self, *args, **kwargs)

    HAProxyRouter.shift = shifting  # type: ignore[method-assign]
    try:
        with recording_commands(until=lambda: getattr(moved, "done", False)) as recorded:
            yield recorded
    finally:
        HAProxyRouter.shift = shift  # type: ignore[method-assign]


def _pipeline_keys(store: Store, name: str) -> dict[str, bytes]:
    """The keys a `/rollback` ack reads, dumped: the pipeline's state and its live rollout."""
    keys = [store.keys.pipeline(name), store.keys.rollout(store.pipeline(name).live_rollout)]
    dumped = {key: store.redis.dump(key) for key in keys}
    missing = [key for key, value in dumped.items() if not isinstance(value, bytes)]
    if missing:
        raise AssertionError(f"nothing to seed the same work with: {missing} not in Redis")
    return cast(dict[str, bytes], dumped)


# 1. Requests lost in a swap --------------------------------------------------------------


def _counts(responses: list[Response], seconds: float) -> dict[str, Any]:
    """How many requests were sent in a window, and how many failed and why."""
    return {
        "requests": len(responses),
        "failed": sum(1 for r in responses if r.failed),
        "no_answer_or_502_504": sum(1 for r in responses if r.status in (0, 502, 503, 504)),
        "app_5xx": sum(1 for r in responses if r.status >= 500 and r.status not in (502, 503, 504)),
        "by_version": dict(Counter(r.version or "?" for r in responses)),
        "seconds": seconds,
        "first_errors": sorted({r.error for r in responses if r.error})[:3],
    }


def _swap_cycle(bot: InProcessBot, served: Served) -> dict[str, Any]:
    """/deploy 2 then /rollback 1 (during 2's watch) under a steady load."""
    store = bot.ctx.store
    botctl.wait_unlocked(store, served.name)
    with steady_load("127.0.0.1", served.port, rate=RATE, max_seconds=LOAD_BOUND_SECONDS) as load:
        time.sleep(LEAD_SECONDS)
        deployed_at = time.monotonic()
        botctl.deploy_and_wait(bot, served.name, "2", statuses=(RolloutStatus.live,))
        time.sleep(SETTLE_SECONDS)
        botctl.wait_unlocked(store, served.name)
        rolled_at = time.monotonic()
        answer = botctl.command(bot, "/rollback", f"{served.name} 1")
        back = botctl.wait_for_rollout(store, botctl.rollout_id_in(answer))
        if back.status is not RolloutStatus.good:
            raise AssertionError(f"{served.name}: rollback ended {back.status.value}: {back.error}")
        time.sleep(SETTLE_SECONDS)
        ended = time.monotonic()
    record = load.record
    if not record.responses or record.responses[-1].sent_at < ended - 0.2:
        raise AssertionError(f"the load stopped before the cycle ended: {record.summary()}")
    cycle = {
        "baseline": _counts(
            record.between(0, deployed_at), deployed_at - record.responses[0].sent_at
        ),
        "deploy": _counts(record.between(deployed_at, rolled_at), rolled_at - deployed_at),
        "rollback": _counts(record.between(rolled_at, ended), ended - rolled_at),
        "rollback_steps": [s.name for s in back.steps],
    }
    logger.info("traffic swap cycle %s: %s", served.name, cycle)
    return cycle


# 2. Rollback time on the traffic path ----------------------------------------------------


def _marks(rollout: Rollout, since: float) -> dict[str, float | None]:
    """When each step of a rollout began and ended, in seconds after `since` (wall time)."""
    marks: dict[str, float | None] = {"accepted": rollout.created_at - since}
    for step in rollout.steps:
        marks[f"{step.name} began"] = step.started_at - since
        marks[f"{step.name} ended"] = (step.ended_at - since) if step.ended_at else None
    return marks


def _rollback_sample(
    bot: InProcessBot, served: Served, probe: ProbeDriver, slack: LoadDriver
) -> dict[str, Any]:
    """`/rollback <p> 1` signed and sent as Slack sends it, from a client process of its own
    (`bench.load`, a kept-alive connection, stamped just before its bytes are written), so the
    client's work and its GIL are not the bot's: the ack bench's way."""
    store = bot.ctx.store
    botctl.wait_unlocked(store, served.name)
    first = probe.start(served.port, "1", consecutive=CONSECUTIVE, timeout=15)
    if first != "2":
        raise AssertionError(f"{served.name} answered {first} before the rollback, not 2")
    reply = slack.one(bot.url + "/slack/events", "/rollback", f"{served.name} 1")
    if reply["status"] != 200:
        raise AssertionError(f"/rollback: HTTP {reply['status']} {str(reply['text'])[:300]}")
    sent = float(reply["sent_at"])
    acked = float(reply["latency"])
    answer = str(reply["text"])
    seen = probe.result()
    rollout = botctl.wait_for_rollout(store, botctl.rollout_id_in(answer))
    if rollout.status is not RolloutStatus.good:
        raise AssertionError(f"rollback ended {rollout.status.value}: {rollout.error}")
    if any(step.name == "start" for step in rollout.steps):
        raise AssertionError("the rollback started a container: the old version was not running")
    switched = float(seen["switched_at"]) - sent
    marks = {"ack returned": acked, **_marks(rollout, sent), "all requests to 1": switched}
    return {
        "seconds": switched,
        "last_request_to_2": float(seen["last_other_sent_at"] or sent) - sent,
        "lower": max(0.0, float(seen["last_other_sent_at"] or sent) - sent),
        "probe_requests": seen["requests"],
        "marks": marks,
    }


def _rollback_timing(
    rig: BenchRig,
    bot: InProcessBot,
    bg: Served,
    floor: Floor,
    probe: ProbeDriver,
    slack: LoadDriver,
    profile: TrafficProfile,
) -> list[dict[str, Any]]:
    """The bot's /rollback samples, each after the floor's; the same work's from the second
    on (its commands are the first sample's)."""
    samples = []
    same: SameWork | None = None
    stack = SameWork(rig, floor, [], {})
    try:
        stack.warm(slack)
        for _ in range(profile.rollback_samples):
            botctl.deploy_and_wait(bot, bg.name, "2", statuses=(RolloutStatus.live,))
            botctl.wait_unlocked(bot.ctx.store, bg.name)
            for _ in range(profile.floor_flips):
                floor.sample_bare()
                floor.sample_router()
                floor.sample_same_work(stack, slack)
                if same is not None:
                    floor.sample_same_work(same, slack)
            if same is None:
                seed = _pipeline_keys(bot.ctx.store, bg.name)
                with _commands_before_the_move() as commands:
                    samples.append(_rollback_sample(bot, bg, probe, slack))
                if not commands:
                    raise AssertionError(
                        "the bot's /rollback sent no Redis command before the move"
                    )
                same = SameWork(rig, floor, commands, seed)
                same.warm(slack)
            else:
                samples.append(_rollback_sample(bot, bg, probe, slack))
            logger.info("traffic rollback sample: %s", samples[-1])
    finally:
        stack.close()
        if same is not None:
            same.close()
    return samples


def _poised(store: Store, rollout_id: str, timeout: float = 30.0) -> float | None:
    """When the poll that would breach falls due: once the streak is one short of `for`, the
    next slot's instant (wall time). None if the rollout breached or ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rollout = store.rollout(rollout_id)
        watch = store.watch(rollout_id)
        if rollout is None or rollout.status is not RolloutStatus.live:
            return None
        if watch is None:  # live, and its watch not recorded yet
            time.sleep(0.01)
            continue
        if store.streaks(rollout_id).get(TRIP_KPI, 0) >= FOR_POLLS - 1:
            slots = [s.slot for s in store.samples(rollout_id)]
            if slots:
                return watch.started_at + (max(slots) + 1) * watch.interval
        time.sleep(0.01)
    raise TimeoutError(f"rollout {rollout_id}: no breaching poll within {timeout:g} s")


def _auto_rollback(store: Store, name: str, after: float, timeout: float = 10.0) -> Rollout:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for rollout in store.recent_rollouts(name, 5):
            if rollout.kind is RolloutKind.auto_rollback and rollout.created_at >= after:
                return rollout
        time.sleep(0.02)
    raise AssertionError(f"{name}: the breach started no automatic rollback")


def _last_good(bot: InProcessBot, trip: Served) -> None:
    """Version 1 the trip pipeline's last good one, the version its watch rolls back to: 2
    goes live (no load: nothing trips), then `/rollback 1` ends good."""
    botctl.deploy_and_wait(bot, trip.name, "2", statuses=(RolloutStatus.live,))
    botctl.wait_unlocked(bot.ctx.store, trip.name)
    answer = botctl.command(bot, "/rollback", f"{trip.name} 1")
    back = botctl.wait_for_rollout(bot.ctx.store, botctl.rollout_id_in(answer))
    if back.status is not RolloutStatus.good:
        raise AssertionError(f"{trip.name}: rollback to 1 ended {back.status.value}: {back.error}")


def _breach_sample(
    bot: InProcessBot, trip: Served, probe: ProbeDriver, attempts: int = 3
) -> dict[str, Any]:
    """Demo 2 blue/green (all traffic) on the trip pipeline under load until its watch trips
    and sends the traffic back to 1."""
    store = bot.ctx.store
    for attempt in range(attempts):
        botctl.wait_unlocked(store, trip.name)
        with steady_load("127.0.0.1", trip.port, rate=RATE, max_seconds=LOAD_BOUND_SECONDS) as load:
            time.sleep(LEAD_SECONDS)
            tripped = botctl.deploy_and_wait(
                bot, trip.name, "2", statuses=(RolloutStatus.live, RolloutStatus.rolled_back)
            )
            due = _poised(store, tripped.id)
            probing, first = False, None
            if due is not None:
                time.sleep(max(0.0, due - PROBE_LEAD_SECONDS - time.time()))
                # The KPI's window holds the load already; like the /rollback samples, only
                # the probe's requests run while the bot works.
                load.stop()
                first = probe.start(trip.port, "1", consecutive=CONSECUTIVE, timeout=15)
                probing = True
            # The probe's answer first: waiting on it holds no GIL, where polling Redis for the
            # rollout every 20 ms (a read and a parse in this, the bot's, process) would take
            # it from the bot while it moves the requests.
            seen = probe.result() if probing else None
            tripped = botctl.wait_for_rollout(store, tripped.id, (RolloutStatus.rolled_back,), 30)
            auto = botctl.wait_for_rollout(
                store, _auto_rollback(store, trip.name, tripped.created_at).id
            )
            botctl.wait_unlocked(store, trip.name)
        store.reopen(trip.name)
        time.sleep(KPI_WINDOW_SECONDS + 1)  # the load leaves the KPI's window
        if auto.status is not RolloutStatus.good:
            raise AssertionError(f"automatic rollback ended {auto.status.value}: {auto.error}")
        if seen is None or first != "2":
            logger.warning(
                "breach sample %d: the probe did not start before the breach (first answer %s); "
                "again",
                attempt,
                first,
            )
            continue
        assert tripped.finished_at is not None
        result = {
            "seconds": float(seen["switched_at"]) - tripped.finished_at,
            "probe_started_before_breach": tripped.finished_at
            - (due or tripped.finished_at)
            + PROBE_LEAD_SECONDS,
            "live_to_breach": tripped.finished_at - (tripped.live_at or tripped.finished_at),
            "last_request_to_2": float(seen["last_other_sent_at"] or tripped.finished_at)
            - tripped.finished_at,
            "lower": max(
                0.0, float(seen["last_other_sent_at"] or tripped.finished_at) - tripped.finished_at
            ),
            "probe_requests": seen["requests"],
            "load": load.record.summary(),
        }
        logger.info("traffic breach sample: %s", result)
        return result
    raise AssertionError(f"the probe missed the breach {attempts} times")


def _slow_slack(
    rig: BenchRig,
    bot: InProcessBot,
    bg: Served,
    trip: Served,
    probe: ProbeDriver,
    slack: LoadDriver,
    samples: int,
) -> dict[str, list[dict[str, Any]]]:
    """The same /rollback and breach samples with every chat.update and chat.postMessage
    taking 200 ms: what of Slack's latency sits between the decision and the traffic."""
    assert rig.emulator is not None
    slow: dict[str, list[dict[str, Any]]] = {"command": [], "breach": []}
    for method in SLOW_METHODS:
        rig.emulator.set_latency(method, SLACK_LATENCY_SECONDS)
    try:
        for _ in range(samples):
            botctl.deploy_and_wait(bot, bg.name, "2", statuses=(RolloutStatus.live,))
            slow["command"].append(_rollback_sample(bot, bg, probe, slack))
            slow["breach"].append(_breach_sample(bot, trip, probe))
    finally:
        for method in SLOW_METHODS:
            rig.emulator.set_latency(method, 0)
    return slow


# 3. A bad version ------------------------------------------------------------------------


def _bad_version_run(bot: InProcessBot, served: Served) -> dict[str, Any]:
    """/deploy 3 (every other GET / fails) under load until the watch has rolled it back."""
    store = bot.ctx.store
    botctl.wait_unlocked(store, served.name)
    with steady_load("127.0.0.1", served.port, rate=RATE, max_seconds=LOAD_BOUND_SECONDS) as load:
        time.sleep(LEAD_SECONDS)
        started = time.monotonic()
        bad = botctl.deploy_and_wait(
            bot, served.name, "3", statuses=(RolloutStatus.live, RolloutStatus.rolled_back)
        )
        bad = botctl.wait_for_rollout(store, bad.id, (RolloutStatus.rolled_back,), 40)
        auto = botctl.wait_for_rollout(store, _auto_rollback(store, served.name, bad.created_at).id)
        botctl.wait_unlocked(store, served.name)
        time.sleep(SETTLE_SECONDS)
        ended = time.monotonic()
    store.reopen(served.name)
    if auto.status is not RolloutStatus.good:
        raise AssertionError(f"automatic rollback ended {auto.status.value}: {auto.error}")
    record = load.record
    if not record.responses or record.responses[-1].sent_at < ended - 0.2:
        raise AssertionError(f"the load stopped before the run ended: {record.summary()}")
    window = record.between(started, ended)
    assert bad.finished_at is not None and bad.live_at is not None
    counts = _counts(window, ended - started)
    to_monotonic = time.monotonic() - time.time()
    while_live = record.between(bad.live_at + to_monotonic, bad.finished_at + to_monotonic)
    run = {
        **counts,
        "share_of_3": counts["by_version"].get("3", 0) / max(1, counts["requests"]),
        "share_of_3_while_live": sum(1 for r in while_live if r.version == "3")
        / max(1, len(while_live)),
        "live_to_breach": bad.finished_at - bad.live_at,
        "percent_at_breach": bad.traffic.percent if bad.traffic else 100,
    }
    logger.info("traffic bad version %s: %s", served.name, run)
    time.sleep(KPI_WINDOW_SECONDS + 1)  # the bad version's errors leave the KPI's window
    return run


# Results ---------------------------------------------------------------------------------


def _sum(cycles: list[dict[str, Any]], key: str) -> dict[str, Any]:
    windows = [c[key] for c in cycles]
    return {
        "cycles": len(windows),
        "requests": sum(w["requests"] for w in windows),
        "failed": sum(w["failed"] for w in windows),
        "no_answer_or_502_504": sum(w["no_answer_or_502_504"] for w in windows),
        "app_5xx": sum(w["app_5xx"] for w in windows),
        "failed_per_cycle": [w["failed"] for w in windows],
        "seconds_per_cycle": [w["seconds"] for w in windows],
        "first_errors": sorted({e for w in windows for e in w["first_errors"]})[:3],
    }


def _median_marks(samples: list[dict[str, Any]]) -> dict[str, float]:
    keys = {key for s in samples for key in s["marks"]}
    table = {
        key: median([s["marks"][key] for s in samples if s["marks"].get(key) is not None])
        for key in keys
    }
    return dict(sorted(table.items(), key=lambda item: item[1]))


def _from_accepted(sample: dict[str, Any]) -> dict[str, Any]:
    """A /rollback sample timed from the bot's decision, as a breach is: the rollout's
    `created_at` (the command parsed, checked and about to claim the pipeline), so the row
    leaves out Slack's delivery, the signature check and the exactly-once claim before it."""
    accepted = float(sample["marks"]["accepted"])
    return {
        "seconds": sample["seconds"] - accepted,
        "lower": max(0.0, sample["lower"] - accepted),
    }


def _timings(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures (until the first request of the final run was sent) and the lower bound
    (the last request the version left behind answered): the switch lies between."""
    values = [s["seconds"] for s in samples]
    return {
        **summarize(values),
        "samples": values,
        "lower_p50": median([s["lower"] for s in samples]),
        "lower_samples": [s["lower"] for s in samples],
    }


def _timing_row(path: str, samples: list[dict[str, Any]], floor_p50: float) -> dict[str, Any]:
    figures = _timings(samples)
    return {
        "path": path,
        **figures,
        "floor_p50": floor_p50,
        "ratio_p50": ratio(figures["p50"], floor_p50),
        "ratio_p99": ratio(figures["p99"], floor_p50),
        "met": bool(
            figures["n"]
            and figures["p99"] <= TARGET_RATIO * floor_p50
            and figures["p99"] < TARGET_SECONDS
        ),
    }


def _same_work(
    commands: int, samples: list[dict[str, float]], command: dict[str, Any], floor_p50: float
) -> dict[str, Any]:
    """Bare bolt's samples with `commands` Redis commands before the move, and the bot's
    /rollback command row against them."""
    figures = _timings(samples)
    return {
        **figures,
        "commands": commands,
        "command_ratio_p50": ratio(command["p50"], figures["p50"]),
        "command_ratio_p99": ratio(command["p99"], figures["p99"]),
        "ratio_p50_to_floor": ratio(figures["p50"], floor_p50),
        "ratio_p99_to_floor": ratio(figures["p99"], floor_p50),
    }


def _result(
    swaps: dict[str, list[dict[str, Any]]],
    timing: list[dict[str, Any]],
    breaches: list[dict[str, Any]],
    slow: dict[str, list[dict[str, Any]]],
    bad: dict[str, list[dict[str, Any]]],
    floor_bare: list[dict[str, float]],
    floor_router: list[dict[str, float]],
    same_work: dict[int, list[dict[str, float]]],
) -> dict[str, Any]:
    lost = []
    for key, pipeline in (
        ("bg", "behind HAProxy (blue_green)"),
        ("direct", "one port, stop then start (no traffic:)"),
    ):
        for window, swap in (("deploy", "/deploy 1 → 2"), ("rollback", "/rollback 2 → 1")):
            lost.append({"pipeline": pipeline, "swap": swap, **_sum(swaps[key], window)})
        lost.append(
            {"pipeline": pipeline, "swap": "before the commands", **_sum(swaps[key], "baseline")}
        )
    behind = [row for row in lost if row["pipeline"].startswith("behind")]
    recorded = max((n for n in same_work if n), default=0)  # the bot's commands before the move
    floor = _timings(floor_bare)
    rows = [
        _timing_row("/rollback command", timing, floor["p50"]),
        _timing_row(
            "/rollback, from its acceptance (the rollout recorded)",
            [_from_accepted(sample) for sample in timing],
            floor["p50"],
        ),
        _timing_row(
            "breach decision (watch marks rolled_back)",
            breaches,
            floor["p50"],
        ),
        _timing_row(
            f"/rollback command, every Slack call taking {SLACK_LATENCY_SECONDS * 1000:g} ms",
            slow["command"],
            floor["p50"],
        ),
        _timing_row(
            f"breach decision, every Slack call taking {SLACK_LATENCY_SECONDS * 1000:g} ms",
            slow["breach"],
            floor["p50"],
        ),
    ]
    by_pipeline = {}
    for key, pipeline in (
        ("canary", "behind HAProxy, canary at 5%"),
        ("direct", "one port, stop then start (no traffic:)"),
    ):
        runs = bad[key]
        by_pipeline[key] = {
            "pipeline": pipeline,
            "runs": len(runs),
            "requests_per_run": median([r["requests"] for r in runs]),
            "failed_per_run": [r["failed"] for r in runs],
            "failed_mean": sum(r["failed"] for r in runs) / len(runs) if runs else None,
            "app_5xx": sum(r["app_5xx"] for r in runs),
            "no_answer_or_502_504": sum(r["no_answer_or_502_504"] for r in runs),
            "share_of_3": median([r["share_of_3"] for r in runs]),
            "share_of_3_while_live": median([r["share_of_3_while_live"] for r in runs]),
            "live_to_breach": median([r["live_to_breach"] for r in runs]),
            "seconds_per_run": median([r["seconds"] for r in runs]),
            "percent_at_breach": [r["percent_at_breach"] for r in runs],
        }
    canary_mean = by_pipeline["canary"]["failed_mean"]
    direct_mean = by_pipeline["direct"]["failed_mean"]
    bad_ratio = canary_mean / direct_mean if canary_mean is not None and direct_mean else None
    return {
        "method": (
            "one real HAProxy (the printed config) with backends bg and trip (blue_green), "
            f"canary (steps {CANARY_STEPS}) and floor, scraped by Prometheus; a pipeline "
            "without traffic: beside them; one in-process bot (real Redis, dockerd, "
            f"Prometheus, emulated Slack); load: steady {RATE:g} GET/s (tests.support.load, 8 "
            f"keep-alive workers, bounded to {LOAD_BOUND_SECONDS:g} s) through traffic.listen "
            f"or to the one-port pipeline's port; probe: GET / from {CLIENTS} keep-alive "
            f"connections of a process of its own, one request per {PACE_SECONDS / CLIENTS * 1000:g} "
            f"ms in all, until the last {CONSECUTIVE} answers (in the order sent) name the old "
            "version, timed to when the first of them was sent"
        ),
        "config": {
            "rate": RATE,
            "watch_interval_seconds": WATCH_INTERVAL_SECONDS,
            "warmup": WARMUP_POLLS,
            "for": FOR_POLLS,
            "kpi_max": KPI_MAX,
            "kpi_window_seconds": KPI_WINDOW_SECONDS,
            "drain": DRAIN,
            "trip_max_per_second": TRIP_MAX,
            "canary_steps": CANARY_STEPS,
            "probe_consecutive": CONSECUTIVE,
        },
        "lost": {
            "rows": lost,
            "target": {"behind_proxy_failed_max": 0},
            "met": all(row["failed"] == 0 for row in behind),
        },
        "rollback_time": {
            "floor": floor,
            "router": _timings(floor_router),
            # The bot's recorded commands, and the stack alone (none).
            "same_work": _same_work(
                recorded, same_work[recorded] if recorded else [], rows[0], floor["p50"]
            ),
            "bolt_only": _same_work(0, same_work.get(0, []), rows[0], floor["p50"]),
            "rows": rows,
            "command_marks_median": _median_marks(timing) if timing else {},
            "command_last_request_to_2_median": median([s["last_request_to_2"] for s in timing]),
            "breach_last_request_to_2_median": median([b["last_request_to_2"] for b in breaches]),
            "breaches": breaches,
            "slow_slack": slow,
            "target": {"ratio_max": TARGET_RATIO, "max_seconds": TARGET_SECONDS, "on": "p99"},
        },
        "bad_version": {
            "canary": by_pipeline["canary"],
            "direct": by_pipeline["direct"],
            "ratio": bad_ratio,
            "target": {"ratio_max": TARGET_BAD_SHARE},
            "met": bad_ratio is not None and bad_ratio <= TARGET_BAD_SHARE,
        },
    }
