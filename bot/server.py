"""Serving the bot: waitress (a production WSGI server) for HTTP; Socket Mode when configured."""

from __future__ import annotations

import gc
import logging
import threading

from slack_bolt.adapter.socket_mode import SocketModeHandler
from waitress.server import create_server

from bot.app import Immune

logger = logging.getLogger(__name__)


class HttpServer:
    """The bot's HTTP endpoint on a thread; port 0 picks a free port (tests, benchmarks)."""

    def __init__(self, immune: Immune, host: str, port: int, threads: int = 16) -> None:
        self.server = create_server(
            immune.wsgi(),
            host=host,
            port=port,
            threads=threads,
            # Slack waits 3 s; a stuck client must not hold a thread for long.
            channel_timeout=30,
            ident="immune",
        )
        self.thread: threading.Thread | None = None
        self._closing = False

    @property
    def port(self) -> int:
        return int(self.server.effective_port)  # type: ignore[union-attr]

    @property
    def host(self) -> str:
        return str(self.server.effective_host)  # type: ignore[union-attr]

    def serve_forever(self) -> None:
        logger.info("listening on http://%s:%s", self.host, self.port)
        try:
            self.server.run()
        except OSError:
            # close() from another thread pulls the socket from under waitress' select loop.
            if not self._closing:
                raise

    def start_in_thread(self) -> None:
        self.thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self._closing = True
        self.server.close()


def freeze_startup_heap() -> None:
    """Keep what start-up built out of the garbage collector's full passes.

    The libraries, models and schemas loaded at start (about 76,000 objects) live as long as
    the process, yet every full collection walks them all: about 40 ms on a 2-core VM, with
    the GIL held, so every ack in flight waits. Frozen, a full pass walks only what was made
    since (about 5 ms). Start-up's own garbage is collected first; frozen objects are still
    freed when nothing refers to them, only cycles among them stay.
    """
    gc.collect()
    gc.freeze()


def start_socket_mode(immune: Immune, app_token: str) -> None:
    handler = SocketModeHandler(immune.bolt, app_token)
    handler.connect()  # type: ignore[no-untyped-call]
    immune.extra_stops.append(handler.close)
    logger.info("connected to Slack in Socket Mode")
