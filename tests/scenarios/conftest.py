"""Fixtures for whole flows: the real bot behind its signed endpoint, the Slack emulator."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.bot_harness import (
    CHANNEL,
    BotProcess,
    InProcessBot,
    bot_settings,
    docker_pipeline,
    free_port,
    write_pipelines,
)
from tests.support.services import HAProxyServer
from tests.support.slack_emulator import SlackEmulator


@pytest.fixture
def emulator() -> Iterator[SlackEmulator]:
    with SlackEmulator() as running:
        running.add_channel(CHANNEL, "deploys")
        yield running


@pytest.fixture
def redis_prefix(redis_client: Any) -> str:
    """A key prefix of this test's own; redis_client flushes the database around it."""
    return f"immune-test-{secrets.token_hex(3)}"


@pytest.fixture
def web_pipeline(demo_images: Any, unique_name: str) -> Callable[..., dict[str, Any]]:
    """Build a docker pipeline for the demo image on a free port (unique container name)."""

    def make(suffix: str = "", **extra: Any) -> dict[str, Any]:
        name = f"{unique_name}-{suffix}" if suffix else unique_name
        return docker_pipeline(
            image=demo_images.repo, container_name=name, port=free_port(), **extra
        )

    return make


@pytest.fixture
def start_bot(
    tmp_path: Path, redis_server: Any, emulator: SlackEmulator, redis_prefix: str
) -> Iterator[Callable[..., InProcessBot]]:
    """Start the production bot in this process with a given pipelines config."""
    bots: list[InProcessBot] = []

    def start(config: dict[str, Any], *, clock: Any = None, **settings: Any) -> InProcessBot:
        path = tmp_path / f"pipelines-{len(bots)}.yml"
        write_pipelines(path, config)
        env = bot_settings(
            redis_url=redis_server.url,
            emulator=emulator,
            pipelines_file=path,
            prefix=redis_prefix,
            **settings,
        )
        bot = InProcessBot(env, emulator, clock=clock)
        bots.append(bot)
        return bot

    yield start
    for bot in bots:
        bot.stop()


@pytest.fixture
def start_bot_process(
    tmp_path: Path, redis_server: Any, emulator: SlackEmulator, redis_prefix: str
) -> Iterator[Callable[..., BotProcess]]:
    """`python -m bot` as a subprocess (for kill -9 and restart scenarios)."""
    processes: list[BotProcess] = []

    def start(
        config: dict[str, Any], *, clock_offset: float | None = None, **settings: Any
    ) -> BotProcess:
        path = tmp_path / "pipelines.yml"
        write_pipelines(path, config)
        env = bot_settings(
            redis_url=redis_server.url,
            emulator=emulator,
            pipelines_file=path,
            prefix=redis_prefix,
            **settings,
        )
        process = BotProcess(
            env, emulator, tmp_path / f"bot-{len(processes)}.log", clock_offset=clock_offset
        )
        processes.append(process)
        process.start()
        return process

    yield start
    for process in processes:
        process.kill()


@pytest.fixture
def served_web(
    demo_images: Any, unique_name: str, prometheus_server: Any, haproxy_server: HAProxyServer
) -> Callable[..., dict[str, Any]]:
    """A pipeline `web` of the demo image behind a real HAProxy (the `haproxy_server` of the
    test) that the session's Prometheus scrapes, judged by the built-in error rate; call it
    with the traffic block's keys (`strategy=...`; `ports`: how many) and it returns the
    pipeline's config."""

    def make(ports: int = 6, **traffic: Any) -> dict[str, Any]:
        backend = unique_name.replace("-", "_")  # unique: the session's Prometheus is shared
        block = haproxy_server.traffic_block(backend, ports=ports, drain="1s", **traffic)
        haproxy_server.serve({"web": block})
        prometheus_server.set_targets({"pipeline": unique_name}, [haproxy_server.exporter])
        prometheus_server.wait_for_series(
            f'haproxy_server_http_responses_total{{proxy="{backend}"}}', timeout=20
        )
        return {
            "channel": CHANNEL,
            "target": "docker",
            "image": demo_images.repo,
            "container": {"name": unique_name, "network_mode": "host"},
            "health": {
                "url": "http://127.0.0.1:{port}/healthz",
                "timeout": "10s",
                "interval": "100ms",
            },
            "traffic": block,
            "watch": {"interval": "1s", "duration": "4s", "warmup": 1},
            "kpis": [
                {
                    "name": "errors",
                    "builtin": "error_rate",
                    "window": "3s",
                    "max": 0.2,
                    "no_data": "ignore",  # no requests between scenarios: nothing to judge
                }
            ],
        }

    return make
