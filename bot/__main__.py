"""`python -m bot`: run the bot (HTTP mode, or Socket Mode when SLACK_APP_TOKEN is set)."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

from bot.app import build
from bot.domain.errors import ConfigError, SettingsError
from bot.server import HttpServer, start_socket_mode
from bot.settings import configure_logging, load_settings

logger = logging.getLogger("bot")


def main() -> int:
    try:
        settings = load_settings()
        configure_logging(settings.log_level)
        settings.require_slack()
        immune = build(settings)
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
    try:
        server.serve_forever()
    finally:
        immune.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
