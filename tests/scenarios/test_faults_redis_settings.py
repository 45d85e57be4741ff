"""Redis settings that lose data, read at start by `python -m bot` on a real redis-server.

An evicting `maxmemory-policy` (allkeys-* and volatile-* alike) is refused with one line and
exit code 2; a Redis with neither AOF nor RDB is a loud warning and the bot runs; a Redis whose
CONFIG command is renamed away (as managed Redis does) is said so, and the bot runs.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.bot_harness import (
    REPO_ROOT,
    BotProcess,
    bot_settings,
    docker_pipeline,
    free_port,
    write_pipelines,
)
from tests.support.services import NAME_PREFIX, RedisServer, ServiceUnavailable
from tests.support.slack_emulator import SlackEmulator

pytestmark = [pytest.mark.slow]

START_TIMEOUT = 60.0


class ConfiguredRedis(RedisServer):
    """A redis-server of this test's own with extra directives (`--name value`)."""

    def __init__(self, workdir: Path, *extra: str, persistent: bool = False) -> None:
        super().__init__(workdir, persistent=persistent)
        self.extra = list(extra)

    def arguments(self) -> list[str]:
        return [*super().arguments(), *self.extra]


@pytest.fixture
def configured_redis(tmp_path: Path) -> Iterator[list[ConfiguredRedis]]:
    servers: list[ConfiguredRedis] = []
    yield servers
    for server in servers:
        server.stop()


def start_redis(
    servers: list[ConfiguredRedis], workdir: Path, *extra: str, persistent: bool = False
) -> ConfiguredRedis:
    server = ConfiguredRedis(workdir, *extra, persistent=persistent)
    try:
        server.start()
    except ServiceUnavailable as error:
        pytest.skip(str(error))
    servers.append(server)
    return server


def bot_env(tmp_path: Path, redis_url: str, emulator: SlackEmulator) -> dict[str, str]:
    path = tmp_path / "pipelines.yml"
    # A pipeline that is never deployed: the bot needs one to start.
    name = f"{NAME_PREFIX}redis-settings-{secrets.token_hex(3)}"
    pipeline = docker_pipeline(image=f"{name}/web", container_name=name, port=free_port())
    write_pipelines(path, {"pipelines": {"web": pipeline}})
    return bot_settings(redis_url=redis_url, emulator=emulator, pipelines_file=path)


def run_bot_expecting_exit(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m bot` that must exit by itself (a refusal), with its output."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "REDIS_"))}
    full.update(env)
    full["PORT"] = "0"
    return subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=REPO_ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl", "allkeys-random"])
def test_an_evicting_policy_is_refused_with_one_line(
    tmp_path: Path,
    configured_redis: list[ConfiguredRedis],
    emulator: SlackEmulator,
    policy: str,
) -> None:
    server = start_redis(
        configured_redis, tmp_path / "redis", "--maxmemory-policy", policy, persistent=True
    )
    result = run_bot_expecting_exit(bot_env(tmp_path, server.url, emulator))
    assert result.returncode == 2, result.stdout + result.stderr
    refusal = [line for line in result.stderr.splitlines() if line.startswith("immune: ")]
    assert refusal == [
        f"immune: cannot start: Redis maxmemory-policy is {policy!r}: Redis would evict the "
        "bot's state (rollouts, locks, approvals) when it fills up. Set `maxmemory-policy "
        "noeviction` (redis.conf, or CONFIG SET maxmemory-policy noeviction)"
    ], result.stderr
    assert "Traceback" not in result.stderr


def test_no_aof_and_no_rdb_is_a_loud_warning_and_the_bot_runs(
    tmp_path: Path, configured_redis: list[ConfiguredRedis], emulator: SlackEmulator
) -> None:
    server = start_redis(configured_redis, tmp_path / "redis")  # --appendonly no --save ""
    bot = BotProcess(bot_env(tmp_path, server.url, emulator), emulator, tmp_path / "bot.log")
    try:
        bot.start(timeout=START_TIMEOUT)
        health = requests.get(bot.url + "/healthz", timeout=5).json()
        assert health["redis"] == {
            "ok": True,
            "maxmemory_policy": "noeviction",
            "persistence": "none",
        }
    finally:
        bot.stop()
    warnings = [
        line for line in bot.log_path.read_text().splitlines() if "REDIS KEEPS NOTHING" in line
    ]
    assert len(warnings) == 1, bot.log_tail()
    assert " WARNING " in warnings[0]
    assert "appendonly yes" in warnings[0]


@pytest.mark.parametrize(
    ("persistence", "extra", "expected"),
    [
        ("aof", ["--appendonly", "yes"], "aof"),
        ("rdb", ["--save", "3600 1"], "rdb"),
    ],
)
def test_aof_or_rdb_runs_without_a_warning(
    tmp_path: Path,
    configured_redis: list[ConfiguredRedis],
    emulator: SlackEmulator,
    persistence: str,
    extra: list[str],
    expected: str,
) -> None:
    server = start_redis(configured_redis, tmp_path / "redis", *extra)
    bot = BotProcess(bot_env(tmp_path, server.url, emulator), emulator, tmp_path / "bot.log")
    try:
        bot.start(timeout=START_TIMEOUT)
        health = requests.get(bot.url + "/healthz", timeout=5).json()
        assert health["redis"]["persistence"] == expected
    finally:
        bot.stop()
    log = bot.log_path.read_text()
    assert "REDIS KEEPS NOTHING" not in log
    assert f"maxmemory-policy noeviction, persistence {expected}" in log


def test_a_disabled_config_command_is_said_and_the_bot_runs(
    tmp_path: Path, configured_redis: list[ConfiguredRedis], emulator: SlackEmulator
) -> None:
    # Managed Redis renames CONFIG; renaming it to "" removes it. The policy would be refused
    # if it could be read: the bot can only say it did not check.
    server = start_redis(
        configured_redis,
        tmp_path / "redis",
        "--rename-command", "CONFIG", "",
        "--maxmemory-policy", "allkeys-lru",
    )  # fmt: skip
    bot = BotProcess(bot_env(tmp_path, server.url, emulator), emulator, tmp_path / "bot.log")
    try:
        bot.start(timeout=START_TIMEOUT)
        health = requests.get(bot.url + "/healthz", timeout=5).json()
        assert health["redis"]["ok"] is True
        assert health["redis"]["settings"] == "not checked"
        assert "CONFIG" in health["redis"]["reason"]
    finally:
        bot.stop()
    lines = [
        line
        for line in bot.log_path.read_text().splitlines()
        if "could not check Redis' maxmemory-policy" in line
    ]
    assert len(lines) == 1, bot.log_tail()
    assert "unknown command" in lines[0].lower()
