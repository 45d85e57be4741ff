"""A deploy target and a KPI source registered from the test suite alone, driven end to end
through the real services: deploy, watch, breach, automatic rollback (no Docker, no
Prometheus, no Slack)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.app import Immune, build, dependency_health
from bot.domain.clock import FrozenClock
from bot.domain.errors import ConfigError
from bot.domain.models import Rollout, RolloutStatus
from bot.plugins import KpiSourcePlugin, Registry, TargetPlugin, default_registry, parse_pipelines
from bot.services import deploys
from bot.services.requests import CommandRequest
from bot.settings import Settings
from bot.slack.incident_messages import build_breach_alert
from bot.slack.messages import build_rollout_message, history_text
from tests.support.domain import CHANNEL, START, RecordingNotifier
from tests.support.fakes import (
    MEMORY,
    MemoryTarget,
    ScriptedSource,
    check_memory_pipeline,
    memory_config,
)
from tests.support.services import RedisServer

QUERY = "error_ratio{job='web'}"


def registry_with(target: MemoryTarget, source: ScriptedSource) -> Registry:
    return (
        default_registry()
        .add_target(
            TargetPlugin(
                name=MEMORY,
                build=lambda shared: target,
                check=check_memory_pipeline,
                health_key=MEMORY,
            )
        )
        .add_source(KpiSourcePlugin(name="scripted", build=lambda shared: source))
    )


def memory_pipeline(**extra: Any) -> dict[str, Any]:
    return memory_config(
        **{
            MEMORY: {"slots": 2},
            "watch": {"interval": "1s", "duration": "2s", "warmup": 0},
            "kpis": [{"name": "error_ratio", "query": QUERY, "source": "scripted", "max": 0.1}],
            **extra,
        }
    )


@pytest.fixture
def target() -> MemoryTarget:
    return MemoryTarget(images={"1", "2"})


@pytest.fixture
def source() -> ScriptedSource:
    return ScriptedSource()


@pytest.fixture
def immune(
    redis_server: RedisServer, tmp_path: Path, target: MemoryTarget, source: ScriptedSource
) -> Iterator[Immune]:
    redis_server.ensure_running()
    registry = registry_with(target, source)
    settings = Settings(
        redis_url=redis_server.url,
        redis_prefix=f"immune-plugins-{secrets.token_hex(3)}",
        pipelines_file=str(tmp_path / "unused.yml"),
        docker_host="unix:///nonexistent/docker.sock",  # never dialled: no pipeline uses it
        prometheus_url="http://127.0.0.1:9",  # a closed port: registered, unused, probed
        slack_api_url="http://127.0.0.1:9/api/",  # never called: the notifier records
        slack_bot_token="xoxb-test",
        slack_signing_secret="test-signing-secret",
        slack_token_verification=False,
    )
    config = parse_pipelines(memory_pipeline(), registry=registry)
    bot = build(
        settings,
        config=config,
        clock=FrozenClock(START),
        notifier=RecordingNotifier(),
        registry=registry,
    )
    try:
        yield bot
    finally:
        bot.stop()


def deploy(immune: Immune, version: str) -> Rollout:
    request = CommandRequest("/deploy", f"web {version}", "U0ADMIN", CHANNEL)
    deploys.deploy(immune.ctx, request)
    [newest] = immune.ctx.store.recent_rollouts("web", 1)
    return newest


def settled(immune: Immune, rollout_id: str, done: Callable[[Rollout], bool]) -> Rollout:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rollout = immune.ctx.store.rollout(rollout_id)
        if rollout is not None and done(rollout):
            return rollout
        time.sleep(0.01)
    raise AssertionError(
        f"rollout {rollout_id} did not settle: {immune.ctx.store.rollout(rollout_id)}"
    )


def watch_through(immune: Immune, rollout_id: str, polls: int) -> None:
    # The watch is recorded just after the rollout shows `live` (the runner's on_live).
    deadline = time.monotonic() + 10
    while immune.ctx.store.watch(rollout_id) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    clock = immune.ctx.clock
    assert isinstance(clock, FrozenClock)
    for _ in range(polls):
        clock.advance(1.0)
        immune.watcher.poll(rollout_id)


def test_only_the_targets_the_pipelines_name_are_built_and_every_source_is_probed(
    immune: Immune,
) -> None:
    assert set(immune.runner.targets) == {MEMORY}, "no Docker client for a memory pipeline"
    assert set(immune.watcher.sources) == {"prometheus", "scripted"}
    healthy, report = dependency_health(immune)
    assert healthy, "Redis answers; the rest degrade"
    assert report[MEMORY] == {"ok": True}
    assert report["scripted"] == {"ok": True, "scripted": 0}
    assert report["prometheus"] == {"ok": False, "error": "ConnectionError"}
    assert "docker" not in report


def test_a_registered_target_and_source_carry_the_whole_loop(
    immune: Immune, target: MemoryTarget, source: ScriptedSource
) -> None:
    source.values[QUERY] = [0.01, 0.02]
    first = deploy(immune, "1")
    first = settled(immune, first.id, lambda r: r.status is RolloutStatus.live)
    watch_through(immune, first.id, 2)
    assert immune.ctx.store.rollout(first.id).status is RolloutStatus.good  # type: ignore[union-attr]
    assert immune.ctx.store.pipeline("web").last_good_version == "1"

    source.values[QUERY] = [0.5]  # each KPI is read from its own source: this one
    second = deploy(immune, "2")
    settled(immune, second.id, lambda r: r.status is RolloutStatus.live)
    watch_through(immune, second.id, 1)
    breached = immune.ctx.store.rollout(second.id)
    assert breached is not None and breached.status is RolloutStatus.rolled_back
    assert immune.ctx.store.pipeline("web").halted
    [restore] = [
        r for r in immune.ctx.store.recent_rollouts("web", 3) if r.kind.value == "auto_rollback"
    ]
    settled(immune, restore.id, lambda r: r.status is RolloutStatus.good)
    assert target.running["web"].version == "1"
    assert [call for call in target.calls if call[0] == "roll_out"] == [
        ("roll_out", "1"),
        ("roll_out", "2"),
        ("roll_out", "1"),
    ]
    assert source.queries == [QUERY] * 3
    notifier = immune.ctx.notifier
    assert isinstance(notifier, RecordingNotifier)
    [incident] = notifier.opened
    deadline = time.monotonic() + 10  # the chart follows once the rollback is over
    while not notifier.charts and time.monotonic() < deadline:
        time.sleep(0.01)
    assert notifier.charts == [incident.id]


def oci_labels(revision: str, source: str = "https://github.com/example/web.git") -> dict[str, str]:
    return {
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.source": source,
        "org.opencontainers.image.created": "2026-12-04T10:00:00Z",
    }


def test_the_breach_alert_names_the_commits_between_the_good_and_the_bad_version(
    immune: Immune, target: MemoryTarget, source: ScriptedSource
) -> None:
    good_sha, bad_sha = "a" * 40, "b" * 40
    target.labels = {"1": oci_labels(good_sha), "2": oci_labels(bad_sha)}
    source.values[QUERY] = [0.01, 0.02]
    first = deploy(immune, "1")
    first = settled(immune, first.id, lambda r: r.status is RolloutStatus.live)
    assert first.provenance is not None and first.provenance.revision == good_sha
    watch_through(immune, first.id, 2)
    source.values[QUERY] = [0.5]
    second = deploy(immune, "2")
    settled(immune, second.id, lambda r: r.status is RolloutStatus.live)
    watch_through(immune, second.id, 1)
    notifier = immune.ctx.notifier
    assert isinstance(notifier, RecordingNotifier)
    [incident] = notifier.opened
    assert incident.good_provenance is not None and incident.good_provenance.revision == good_sha
    assert incident.bad_provenance is not None and incident.bad_provenance.revision == bad_sha
    alert = str(build_breach_alert(incident))
    assert "*Commits:* `aaaaaaa` (`1`) to `bbbbbbb` (`2`)" in alert, alert
    assert f"<https://github.com/example/web/compare/{good_sha}...{bad_sha}|compare>" in alert
    rollout = immune.ctx.store.rollout(second.id)
    assert rollout is not None
    message = str(build_rollout_message(rollout))
    assert f"commit <https://github.com/example/web/commit/{bad_sha}|bbbbbbb>" in message, message
    assert "built 2026-12-04T10:00:00Z" in message
    history = history_text("web", immune.ctx.store.recent_rollouts("web", 5), [])
    assert f"commit <https://github.com/example/web/commit/{good_sha}|aaaaaaa>" in history


def test_without_both_revisions_the_alert_names_no_commit_range(
    immune: Immune, target: MemoryTarget, source: ScriptedSource
) -> None:
    target.labels = {"2": oci_labels("b" * 40)}  # 1 was built without labels
    source.values[QUERY] = [0.01, 0.02]
    first = deploy(immune, "1")
    settled(immune, first.id, lambda r: r.status is RolloutStatus.live)
    watch_through(immune, first.id, 2)
    source.values[QUERY] = [0.5]
    second = deploy(immune, "2")
    settled(immune, second.id, lambda r: r.status is RolloutStatus.live)
    watch_through(immune, second.id, 1)
    notifier = immune.ctx.notifier
    assert isinstance(notifier, RecordingNotifier)
    [incident] = notifier.opened
    assert incident.good_provenance is None
    assert "Commits" not in str(build_breach_alert(incident))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {MEMORY: {"slots": 0}},
            "pipelines.web.memory.slots: Input should be greater than or equal to 1",
        ),
        ({MEMORY: {"slot": 2}}, "pipelines.web.memory.slot: unknown key"),
        ({"memroy": {"slots": 2}}, "pipelines.web.memroy: unknown key"),
        (
            {"target": "nope"},
            "pipelines.web.target: unknown target 'nope' (known: docker, memory, swarm)",
        ),
        (
            {"kpis": [{"name": "e", "query": "q", "source": "graphite", "max": 1}]},
            "pipelines.web.kpis.0.source: unknown KPI source 'graphite' (known: prometheus, scripted)",
        ),
    ],
)
def test_a_plugin_validates_its_own_section_and_errors_keep_the_key_path(
    target: MemoryTarget, source: ScriptedSource, change: dict[str, Any], expected: str
) -> None:
    raw = memory_pipeline()
    raw["pipelines"]["web"].update(change)
    with pytest.raises(ConfigError) as raised:
        parse_pipelines(raw, source="pipelines.yml", registry=registry_with(target, source))
    assert f"pipelines.yml: {expected}" in raised.value.message


def test_without_the_plugin_the_same_file_is_refused(
    target: MemoryTarget, source: ScriptedSource
) -> None:
    with pytest.raises(ConfigError, match="unknown target 'memory' \\(known: docker, swarm\\)"):
        parse_pipelines(memory_pipeline())
