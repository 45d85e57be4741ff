"""The app factory: builds the bot's parts, the bolt App and the HTTP (WSGI) application."""

from __future__ import annotations

import json
import logging
import secrets
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis
from apscheduler.executors.pool import ThreadPoolExecutor as SchedulerPool
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from slack_bolt import App, BoltRequest, BoltResponse
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_bolt.middleware import Middleware
from slack_sdk import WebClient

from bot.domain.clock import Clock, SystemClock
from bot.domain.config import PipelinesConfig
from bot.domain.errors import SettingsError
from bot.domain.text import utc
from bot.plugins import Registry, Shared, default_registry, load_pipelines
from bot.ports import KpiSource, Notifier, Target
from bot.services.context import Context, Limits
from bot.services.engine_status import EngineStatus
from bot.services.engines import ENGINE_CHECK_SECONDS, check_engines
from bot.services.posted import record_posted
from bot.services.queue import start_due
from bot.services.recovery import (
    reconcile_live_versions,
    recovery_pass,
    restore_proxy_routes,
)
from bot.services.runner import RolloutRunner, RolloutSettings
from bot.services.status import refresh_engine_view
from bot.services.traffic import Routers
from bot.services.watch import SYNC_INTERVAL_SECONDS, Watcher
from bot.settings import Settings, held_secrets, redact_logs
from bot.slack.home import refresh_homes
from bot.slack.link import SlackLink
from bot.slack.notifier import SlackNotifier, build_outbox_client, build_web_client
from bot.store.connection import connect
from bot.store.durability import ReplicationBarrier, durable
from bot.store.keys import Keys
from bot.store.settings_check import RedisDurability, check_redis_settings
from bot.store.store import Store
from bot.traffic.haproxy import HAProxyRouter
from handlers import actions, commands, errors, events, views

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

logger = logging.getLogger(__name__)

RECOVERY_INTERVAL_SECONDS = 2.0
ENGINE_VIEW_INTERVAL_SECONDS = 2.0  # what /pipeline <name> shows of the engine is this old


def instance_name() -> str:
    return f"{socket.gethostname()}-{secrets.token_hex(3)}"


@dataclass
class Immune:
    """One running bot: its context, its bolt app, its scheduler."""

    settings: Settings
    ctx: Context
    runner: RolloutRunner
    bolt: App
    scheduler: BackgroundScheduler
    watcher: Watcher
    web_client: WebClient
    # /healthz entries asked of the plugins in use: key -> probe (Redis and the scheduler
    # are the bot's own).
    probes: dict[str, Callable[[], dict[str, object]]] = field(default_factory=dict)
    extra_stops: list[Callable[[], None]] = field(default_factory=list)
    # Connections to release once everything has stopped (clients, sessions, pools).
    closers: list[Callable[[], None]] = field(default_factory=list)
    # WAIT for Redis replicas before answering Slack (None: no replicas to wait for).
    replicated: ReplicationBarrier | None = None
    # Redis' eviction policy and persistence as read at start (shown in /healthz).
    redis_durability: RedisDurability | None = None
    # The outbox every message to Slack goes through, and Slack's state (shown in /healthz).
    slack_link: SlackLink | None = None

    def start(self) -> None:
        """Load the store's scripts, reconcile with the engine, then start the background
        jobs."""
        try:
            self.ctx.store.load_scripts()
        except Exception as exc:  # Redis down at start-up: each loads on its first use instead
            logger.warning("could not load the Redis scripts at start-up: %s", exc)
        try:
            reconcile_live_versions(self.ctx)
        except Exception:
            logger.exception("could not reconcile live versions with the engine at start-up")
        self.scheduler.add_job(
            recovery_pass,
            "interval",
            args=[self.ctx],
            seconds=RECOVERY_INTERVAL_SECONDS,
            id="recovery",
            coalesce=True,
            max_instances=1,
            # A late recovery pass is still wanted; never silently drop it.
            misfire_grace_time=None,
        )
        self.scheduler.add_job(
            refresh_engine_view,
            "interval",
            args=[self.ctx],
            seconds=ENGINE_VIEW_INTERVAL_SECONDS,
            id="refresh-engine-view",
            coalesce=True,
            max_instances=1,
        )
        self.scheduler.add_job(
            self.watcher.sync,
            "interval",
            seconds=SYNC_INTERVAL_SECONDS,
            id="sync-watches",
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
        )
        self.scheduler.add_job(
            refresh_homes,
            "interval",
            args=[
                self.ctx,
                self.web_client,
                self.settings.home_refresh_seconds,
                self.slack_link,
            ],
            seconds=self.settings.home_refresh_seconds,
            id="refresh-homes",
            coalesce=True,
            max_instances=1,
        )
        self.scheduler.add_job(
            check_engines,
            "interval",
            args=[self.ctx, self.runner.targets],
            seconds=ENGINE_CHECK_SECONDS,
            id="check-engines",
            coalesce=True,
            max_instances=1,
        )
        self.scheduler.add_job(
            start_due,
            "interval",
            args=[self.ctx],
            seconds=self.settings.queue_check_seconds,
            id="start-queued-deploys",
            coalesce=True,
            max_instances=1,
        )
        if any(p.traffic is not None for p in self.ctx.config.pipelines.values()):
            self.scheduler.add_job(
                restore_proxy_routes,
                "interval",
                args=[self.ctx],
                seconds=RECOVERY_INTERVAL_SECONDS,
                id="restore-proxy-routes",
                coalesce=True,
                max_instances=1,
                misfire_grace_time=None,
            )
        self.runner.start()
        self.scheduler.start()
        recovery_pass(self.ctx)  # before the sync, which then schedules the watches it records
        self.watcher.sync()

    def stop(self, wait: bool = False) -> None:
        for stop in self.extra_stops:
            stop()
        if self.scheduler.running:
            # Never wait here: APScheduler 3 holds its job-store lock while it waits for running
            # jobs, and the watch sync job takes that lock (get_jobs) - a deadlock.
            self.scheduler.shutdown(wait=False)
        self.runner.shutdown(wait=wait)
        if self.slack_link is not None:
            self.slack_link.stop(wait=wait)
        if wait:  # nothing runs any more: its connections may go (not while work still runs)
            for close in self.closers:
                try:
                    close()
                except Exception:
                    logger.exception("could not close a connection at stop")

    def wsgi(self) -> Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]:
        return build_wsgi(self)


def build(
    settings: Settings,
    *,
    config: PipelinesConfig | None = None,
    clock: Clock | None = None,
    notifier: Notifier | None = None,
    instance_id: str | None = None,
    registry: Registry | None = None,
    routers: Routers | None = None,
) -> Immune:
    """Build every part from settings; nothing starts until Immune.start().

    Only the deploy targets and KPI sources the pipelines name are built.
    """
    clock = clock or SystemClock()
    registry = registry or default_registry()
    config = config or load_pipelines(settings.pipelines_file, registry)
    # Every log line from here on hides the tokens and the pipelines' secret values.
    redact_logs([*held_secrets(settings), *config.secret_values])
    redis_client = connect(settings.redis_url)
    # An evicting Redis is refused here (SettingsError: `python -m bot` exits 2 with one line).
    try:
        redis_durability = check_redis_settings(redis_client)
    except SettingsError:
        redis_client.close()
        raise
    store = Store(
        redis_client,
        Keys(settings.redis_prefix),
        clock,
        audit_max_age_days=settings.audit_max_age_days,
    )
    shared = Shared(settings)
    target_plugins, source_plugins = registry.used(config)
    targets: dict[str, Target] = {plugin.name: plugin.build(shared) for plugin in target_plugins}
    sources: dict[str, KpiSource] = {plugin.name: plugin.build(shared) for plugin in source_plugins}
    probes: dict[str, Callable[[], dict[str, object]]] = {}
    engines = EngineStatus()
    for target_plugin in target_plugins:
        probes.setdefault(
            target_plugin.health_key or target_plugin.name,
            engine_probe(target_plugin.name, targets[target_plugin.name], engines),
        )
    for source_plugin in source_plugins:
        probes.setdefault(
            source_plugin.health_key or source_plugin.name, sources[source_plugin.name].health
        )
    routers = routers or Routers(lambda runtime_api: HAProxyRouter([runtime_api]))
    for pipeline in config.pipelines.values():
        if pipeline.traffic is not None:
            probes.setdefault(
                f"{pipeline.traffic.proxy} {pipeline.traffic.runtime_api}",
                routers.for_traffic(pipeline.traffic).health,
            )
    web_client = build_web_client(
        settings.slack_bot_token, settings.slack_api_url, settings.slack_timeout_seconds
    )
    slack_link = None
    if notifier is None:
        slack_link = SlackLink(
            timeout_seconds=settings.slack_timeout_seconds,
            retry_seconds=settings.slack_retry_seconds,
            give_up_seconds=settings.slack_give_up_seconds,
        )
        notifier = SlackNotifier(
            build_outbox_client(
                settings.slack_bot_token, settings.slack_api_url, settings.slack_timeout_seconds
            ),
            slack_link,
            on_posted=lambda posted: record_posted(store, posted),
        )
    instance_id = instance_id or instance_name()
    barrier = None
    if settings.wait_replicas:
        barrier = ReplicationBarrier(
            redis_client,
            store.keys.instance(instance_id),
            settings.wait_replicas,
            settings.redis_wait_timeout_ms,
        )
        notifier = durable(notifier, barrier)
    runner = RolloutRunner(
        store=store,
        config=config,
        targets=targets,
        notifier=notifier,
        clock=clock,
        instance_id=instance_id,
        settings=RolloutSettings(
            lock_ttl_seconds=settings.lock_ttl_seconds,
            workers=settings.rollout_workers,
            redis_outage_seconds=settings.redis_outage_seconds,
            engine_wait_seconds=settings.engine_wait_seconds,
        ),
        routers=routers,
    )
    ctx = Context(
        limits=Limits(
            lock_ttl_seconds=settings.lock_ttl_seconds,
            audit_max_age_days=settings.audit_max_age_days,
        ),
        config=config,
        store=store,
        runner=runner,
        notifier=notifier,
        clock=clock,
        instance_id=instance_id,
        engines=engines,
    )
    bolt = build_bolt_app(settings, ctx, web_client)
    scheduler = BackgroundScheduler(timezone="UTC", executors={"default": SchedulerPool(20)})
    watcher = Watcher(ctx, scheduler, sources)
    runner.on_live = watcher.begin
    return Immune(
        settings=settings,
        ctx=ctx,
        runner=runner,
        bolt=bolt,
        scheduler=scheduler,
        watcher=watcher,
        web_client=web_client,
        probes=probes,
        replicated=barrier,
        redis_durability=redis_durability,
        slack_link=slack_link,
        closers=[
            *(c for c in (getattr(t, "close", None) for t in targets.values()) if callable(c)),
            *(c for c in (getattr(s, "close", None) for s in sources.values()) if callable(c)),
            shared.close,
            redis_client.close,
        ],
    )


def engine_probe(
    engine: str, target: Target, engines: EngineStatus
) -> Callable[[], dict[str, object]]:
    """/healthz's entry for an engine: its ping now, and since when the bot has found it down
    (it stays down until the bot has reconciled with it after its return)."""

    def probe() -> dict[str, object]:
        report = target.health()
        since = engines.down_since(engine)
        if since is not None:
            report = {**report, "down_since": utc(since)}
        return report

    return probe


def build_bolt_app(settings: Settings, ctx: Context, web_client: Any) -> App:
    bolt = App(
        # The token travels in `client` (bolt warns when given both).
        signing_secret=settings.slack_signing_secret or "",
        client=web_client,
        # The listener acks with its answer and hands slow work to the rollout pool, so the
        # HTTP reply needs no polling for the ack (bolt's default mode polls every 10 ms).
        process_before_response=True,
        token_verification_enabled=settings.slack_token_verification
        and bool(settings.slack_bot_token),
        request_verification_enabled=True,
    )

    bolt.use(ProvideContext(ctx))
    commands.register(bolt)
    actions.register(bolt)
    events.register(bolt)
    views.register(bolt)
    errors.register(bolt)
    return bolt


class ProvideContext(Middleware):
    """Hands every listener the bot's Context, as `context["immune"]`.

    A Middleware class: bolt calls its `process` as is, where a function middleware costs an
    argument injection on every request.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def process(
        self, *, req: BoltRequest, resp: BoltResponse, next: Callable[[], BoltResponse]
    ) -> BoltResponse | None:
        req.context["immune"] = self.ctx
        return next()


# HTTP --------------------------------------------------------------------------------------


def dependency_health(immune: Immune) -> tuple[bool, dict[str, Any]]:
    """Each dependency's state; Redis down is fatal (503), the others degrade."""
    report: dict[str, Any] = {}
    try:
        immune.ctx.store.ping()
        report["redis"] = {"ok": True}
        if immune.redis_durability is not None:
            report["redis"].update(immune.redis_durability.as_health())
    except redis.RedisError as exc:
        report["redis"] = {"ok": False, "error": type(exc).__name__}
    for key, probe in immune.probes.items():
        report[key] = probe()
    report["scheduler"] = {
        "ok": immune.scheduler.running,
        "jobs": len(immune.scheduler.get_jobs()) if immune.scheduler.running else 0,
    }
    if immune.slack_link is not None:
        report["slack"] = immune.slack_link.health()
    report["instance"] = immune.ctx.instance_id
    return bool(report["redis"]["ok"]), report


def build_wsgi(immune: Immune) -> Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]:
    slack = SlackRequestHandler(immune.bolt, path="/slack/events")

    def application(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/slack/events":
            answer = slack(environ, start_response)
            if immune.replicated is not None:
                # The answer leaves when this returns: what it acknowledges is replicated first.
                immune.replicated()
            return answer
        if path == "/healthz" and method in ("GET", "HEAD"):
            healthy, report = dependency_health(immune)
            body = json.dumps({"ok": healthy, **report}).encode()
            start_response(
                "200 OK" if healthy else "503 Service Unavailable",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        if path == "/metrics" and method in ("GET", "HEAD"):
            body = generate_latest()
            start_response(
                "200 OK",
                [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))],
            )
            return [body]
        body = b"Not Found"
        start_response(
            "404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [body]

    return application
