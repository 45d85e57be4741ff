"""Secrets stay secret through a whole run: deploy, a crash, a breach and its rollback,
/pipeline, its history and the audit export, every log line at DEBUG.

The pipeline's secret values (one inline `secret: true`, one from `environment_from`) and the
bot's tokens are looked for in every Slack call the emulator recorded, every response_url
post, every answer to a command, every uploaded file and every log line: none may hold one.
The container must still have been given the values.
"""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from bot.domain.models import RolloutKind, RolloutStatus
from bot.domain.secrets import REDACTED
from tests.scenarios.test_deploy_loop import deploy, finished
from tests.scenarios.test_watch import watched_rollout_ended
from tests.scenarios.test_watch import watched_web as watched_web  # a fixture
from tests.support.bot_harness import BOT_TOKEN, SIGNING_SECRET, wait_until
from tests.support.slack_emulator import SlackEmulator

pytestmark = [pytest.mark.docker, pytest.mark.prometheus]


def test_secret_values_and_tokens_appear_in_no_message_answer_export_or_log_line(
    start_bot: Any,
    watched_web: Any,
    prometheus_server: Any,
    emulator: SlackEmulator,
    docker_client: docker.DockerClient,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    inline = f"hunter2-{secrets.token_hex(6)}"
    from_file = f"api-key-{secrets.token_hex(6)}"
    (tmp_path / "web.env").write_text(f"# the payment API\nAPI_KEY={from_file}\n")
    web = watched_web(duration="8s")
    # The demo image prints DEMO_VERSION in its own log lines: a secret that reaches the
    # logs' tail a failed rollout shows.
    web["container"]["environment"]["DEMO_VERSION"] = {"value": inline, "secret": True}
    web["container"]["environment_from"] = "web.env"
    bot = start_bot({"pipelines": {"web": web}}, prometheus_url=prometheus_server.url)
    answers: list[str] = []

    deploy(bot, "web 1")
    assert watched_rollout_ended(bot, "1").status is RolloutStatus.good
    env = docker_client.containers.get(web["container"]["name"]).attrs["Config"]["Env"]
    assert f"DEMO_VERSION={inline}" in env and f"API_KEY={from_file}" in env, "the engine got them"

    answers.append(deploy(bot, "web 5"))  # exits 3 at start, printing DEMO_VERSION
    crashed = finished(bot, "web", "5")
    assert crashed.status is RolloutStatus.failed
    assert f"demo {REDACTED} (crash): fatal" in crashed.logs_tail, crashed.logs_tail

    answers.append(deploy(bot, "web 3"))  # half its requests fail: breach, rollback
    breached = watched_rollout_ended(bot, "3", timeout=40)
    assert breached.status is RolloutStatus.rolled_back and breached.incident_id
    wait_until(
        lambda: any(
            r.kind is RolloutKind.auto_rollback and r.status is RolloutStatus.good
            for r in bot.ctx.store.recent_rollouts("web", 3)
        ),
        20,
        what="the automatic rollback",
    )
    for text in ("", "web", "history web", "audit web", f"incident {breached.incident_id}"):
        response = bot.slack.command("/pipeline", text)
        assert response.status == 200
        answers.append(response.text)
    assert any("5" in answer and "failed" in answer for answer in answers), answers
    wait_until(
        lambda: requests.get(bot.url + "/healthz", timeout=5).json()["slack"]["queued"] == 0,
        10,
        what="every message to go out",
    )

    calls = emulator.calls()
    said = [
        *(json.dumps(call.body, default=str) for call in calls),
        *(json.dumps(post.body) for post in emulator.responses()),
        *answers,
        *(
            json.dumps(file, default=lambda raw: raw.decode("latin-1", "replace"))
            for file in emulator.uploaded_files().values()
        ),
    ]
    headers = [json.dumps(call.headers) for call in calls]
    logged = caplog.text
    assert len(calls) >= 10 and len(caplog.records) >= 200, (len(calls), len(caplog.records))
    assert any(crashed.id in text for text in said), "the failed rollout was shown"
    for secret in (inline, from_file):
        assert not [text for text in said + headers if secret in text], secret
        assert secret not in logged, secret
    # The bot token goes to Slack only in the Authorization header, never in what it says;
    # neither it nor the signing secret is in any log line.
    for token in (BOT_TOKEN, SIGNING_SECRET):
        assert not [text for text in said if token in text], token
        assert token not in logged, token
