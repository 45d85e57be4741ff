"""`python -m bot`: run the bot (HTTP mode, or Socket Mode when SLACK_APP_TOKEN is set).

`python -m bot proxy-config [pipeline]` prints the haproxy.cfg the pipelines behind a proxy need.
`python -m bot check` runs every KPI query once and reports those that are wrong.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from bot.app import build
from bot.domain.clock import Clock
from bot.domain.errors import ConfigError, ImmuneError, SettingsError
from bot.plugins import Shared, default_registry, load_pipelines
from bot.server import HttpServer, freeze_startup_heap, start_socket_mode
from bot.services.kpi_check import QueryState, check_queries
from bot.settings import configure_logging, held_secrets, load_settings, redact_logs
from bot.traffic.haproxy_config import DEFAULT_EXPORTER, render, traffic_group

logger = logging.getLogger("bot")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bot", description="Run the immune bot, or one of its tools."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    proxy = commands.add_parser(
        "proxy-config",
        help="print the haproxy.cfg for the pipelines behind a proxy",
        description="Print a complete haproxy.cfg for the pipelines that share one HAProxy: "
        "all pipelines with a traffic: block, or those sharing PIPELINE's runtime API.",
    )
    proxy.add_argument("pipeline", nargs="?", help="print the config of this pipeline's HAProxy")
    proxy.add_argument(
        "--exporter",
        default=DEFAULT_EXPORTER,
        metavar="HOST:PORT",
        help=f"where HAProxy's Prometheus exporter listens (default {DEFAULT_EXPORTER})",
    )
    proxy.add_argument(
        "--pipelines-file",
        metavar="PATH",
        help="the pipelines file (default: PIPELINES_FILE, as the bot reads it)",
    )
    check = commands.add_parser(
        "check",
        help="run every KPI query once and report those that are wrong",
        description="Run every KPI query of every pipeline once against its source (Prometheus) "
        "and print one line per query. Exit 0 when all parse, 1 when one is wrong (rejected, "
        "several series, a string) or could not be checked (the source did not answer), 2 when "
        "the settings or pipelines file are invalid.",
    )
    check.add_argument(
        "--pipelines-file",
        metavar="PATH",
        help="the pipelines file (default: PIPELINES_FILE, as the bot reads it)",
    )
    args = parser.parse_args(argv)
    if args.command == "proxy-config":
        return proxy_config(args.pipeline, args.exporter, args.pipelines_file)
    if args.command == "check":
        return check_kpis(args.pipelines_file)
    return serve()


def check_kpis(pipelines_file: str | None) -> int:
    """One line per KPI query on stdout; a summary on stderr when something is wrong."""
    try:
        settings = load_settings()
        registry = default_registry()
        config = load_pipelines(pipelines_file or settings.pipelines_file, registry)
    except ImmuneError as exc:
        print(f"immune: check: {exc.message}", file=sys.stderr)
        return 2
    redact_logs([*held_secrets(settings), *config.secret_values])
    shared = Shared(settings)
    _, source_plugins = registry.used(config)
    sources = {plugin.name: plugin.build(shared) for plugin in source_plugins}
    try:
        checks = check_queries(config, sources)
    finally:
        for source in sources.values():
            close = getattr(source, "close", None)
            if callable(close):
                close()
        shared.close()
    for item in checks:
        print(f"{item.state.value:<11}  {item.pipeline}/{item.kpi}  {item.query}  -> {item.detail}")
    wrong = [c for c in checks if c.state is QueryState.wrong]
    unchecked = [c for c in checks if c.state is QueryState.not_checked]
    if wrong:
        print(f"immune: check: {len(wrong)} KPI query(ies) are wrong", file=sys.stderr)
    if unchecked:
        print(f"immune: check: {len(unchecked)} KPI query(ies) not checked", file=sys.stderr)
    return 1 if wrong or unchecked else 0


def proxy_config(pipeline: str | None, exporter: str, pipelines_file: str | None) -> int:
    """Print the haproxy.cfg; one line on stderr and exit code 2 when there is none to print."""
    try:
        config = load_pipelines(pipelines_file or load_settings().pipelines_file)
        text = render(traffic_group(config, pipeline), exporter)
    except ImmuneError as exc:
        print(f"immune: proxy-config: {exc.message}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


def serve(clock: Clock | None = None) -> int:
    """Run the bot until SIGTERM/SIGINT; `clock` is the seam a test shifts (default: the
    system's)."""
    try:
        settings = load_settings()
        configure_logging(settings.log_level, held_secrets(settings))
        settings.require_slack()
        immune = build(settings, clock=clock)
    except (SettingsError, ConfigError) as exc:
        # One clear line per problem, naming the setting or key; never a traceback.
        print(f"immune: cannot start: {exc.message}", file=sys.stderr)
        return 2
    server = HttpServer(immune, settings.host, settings.port, threads=settings.http_threads)

    def stop(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %s: stopping", signum)
        server.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    immune.start()
    if settings.socket_mode:
        assert settings.slack_app_token is not None
        start_socket_mode(immune, settings.slack_app_token)
    freeze_startup_heap()
    try:
        server.serve_forever()
    finally:
        immune.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
