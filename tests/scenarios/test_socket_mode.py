"""Socket Mode: with SLACK_APP_TOKEN the bot takes commands over a WebSocket, not HTTP."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from tests.scenarios.test_deploy_loop import serving_version
from tests.support.bot_harness import CHANNEL, wait_until
from tests.support.socket_mode_server import SocketModeServer

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def slash_command(command: str, text: str, response_url: str) -> dict[str, Any]:
    """The payload of a `slash_commands` envelope: the same fields as the HTTP form."""
    return {
        "token": "legacy-token",
        "team_id": "T0TEAM",
        "team_domain": "immune-test",
        "channel_id": CHANNEL,
        "channel_name": "deploys",
        "user_id": "U0DEV1",
        "user_name": "dev1",
        "command": command,
        "text": text,
        "api_app_id": "A0IMMUNE",
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": f"{secrets.randbelow(10**10)}.{secrets.token_hex(8)}",
    }


def test_a_deploy_over_socket_mode(
    start_bot_process: Any, web_pipeline: Any, emulator: Any, redis_client: Any, redis_prefix: str
) -> None:
    server = SocketModeServer()
    emulator.add_token("xapp-test")
    emulator.socket_mode_url = server.url
    try:
        web = web_pipeline()
        start_bot_process({"pipelines": {"web": web}}, slack_app_token="xapp-test")
        server.wait_connected()

        refused = server.send_envelope(
            "slash_commands", slash_command("/deploy", "web 99", emulator.response_url())
        )
        answer = server.wait_for_ack(refused)["payload"]
        assert answer["response_type"] == "ephemeral"
        assert "is not on the Docker engine" in answer["text"]

        accepted = server.send_envelope(
            "slash_commands", slash_command("/deploy", "web 1", emulator.response_url())
        )
        answer = server.wait_for_ack(accepted)["payload"]
        assert answer["text"].startswith("Deploying")
        wait_until(lambda: serving_version(web) == "1", 30, what="version 1 serving")
        emulator.wait_for("chat.update", lambda call: "live and good" in str(call.body), timeout=15)
        assert redis_client.hget(f"{redis_prefix}:pipeline:web", "live_version") == "1"
    finally:
        server.stop()
