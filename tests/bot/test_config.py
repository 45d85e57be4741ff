"""pipelines.yml validation: errors name the file, the key path and the problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.domain.config import parse_duration
from bot.domain.errors import ConfigError
from bot.plugins import load_pipelines
from bot.settings import Settings

GOOD: dict[str, Any] = {
    "timezone": "Europe/London",
    "admins": ["U0ADMIN"],
    "pipelines": {
        "web": {
            "channel": "C0DEPLOY",
            "image": "demo/web",
            "container": {"name": "web", "network_mode": "host", "environment": {"PORT": "18080"}},
            "health": {"url": "http://127.0.0.1:18080/healthz", "timeout": "20s"},
            "watch": {"interval": "5s", "duration": "10m"},
            "kpis": [{"name": "error_rate", "query": "up", "max": 0.02, "for": 3}],
        }
    },
}


def write(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "pipelines.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def broken(change: Any) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(yaml.safe_dump(GOOD))
    change(config["pipelines"]["web"])
    return config


def test_the_design_example_loads(tmp_path: Path) -> None:
    config = load_pipelines(write(tmp_path, GOOD))
    web = config.pipelines["web"]
    assert web.watch.interval == 5 and web.watch.duration == 600
    assert web.kpis[0].for_polls == 3 and web.kpis[0].no_data == "breach"
    assert web.auto_rollback is True and web.pull == "never"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda p: p.update(colour="blue"), "pipelines.web.colour: unknown key"),
        (
            lambda p: p["watch"].update(interval="5 minutes"),
            "pipelines.web.watch.interval: invalid duration '5 minutes'",
        ),
        (lambda p: p.pop("image"), "pipelines.web.image: required key is missing"),
        (lambda p: p.pop("channel"), "pipelines.web.channel: required key is missing"),
        (
            lambda p: p["container"].update(portz=1),
            "pipelines.web.container: unknown container option(s) portz",
        ),
        (
            lambda p: p["kpis"][0].pop("max"),
            "pipelines.web.kpis.0: KPI 'error_rate' needs max and/or min",
        ),
        (lambda p: p.update(approvals={"approvers": []}), "approvals.approvers is empty"),
        (lambda p: p.update(windows=[{"days": "mon-fry"}]), "invalid days 'mon-fry'"),
        (lambda p: p.update(image="demo/web:1"), "must not carry a tag"),
        (lambda p: p["health"].update(url="localhost:80"), "is not an http(s) URL"),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, change: Any, expected: str) -> None:
    path = write(tmp_path, broken(change))
    with pytest.raises(ConfigError) as error:
        load_pipelines(path)
    assert str(path) in error.value.message
    assert expected in error.value.message


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "pipelines.yml"
    path.write_text("pipelines:\n  web: [\n")
    with pytest.raises(ConfigError, match=r"line \d+, column \d+: invalid YAML"):
        load_pipelines(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_pipelines(tmp_path / "nope.yml")


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), (7, 7)]
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "", "-1s", "0s", "soon", True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def start_bot(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m bot` as a user starts it, with only `env`."""
    return subprocess.run(
        [sys.executable, "-m", "bot"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        check=False,
    )


def test_start_up_refuses_missing_settings(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PIPELINES_FILE": str(write(tmp_path, GOOD))}
    result = start_bot(env, tmp_path)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "immune: cannot start: SLACK_BOT_TOKEN is not set (a bot token, xoxb-…)"
    )
    env.update(SLACK_BOT_TOKEN="xoxb-1", SLACK_SIGNING_SECRET="s", PORT="http")
    result = start_bot(env, tmp_path)
    assert result.returncode == 2 and "PORT:" in result.stderr and "Traceback" not in result.stderr
    env.update(PORT="3999", PIPELINES_FILE=str(tmp_path / "missing.yml"))
    result = start_bot(env, tmp_path)
    assert result.returncode == 2 and "missing.yml: file not found" in result.stderr
    assert Settings(_env_file=None).redis_prefix == "immune"  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("image", "pull", "expected"),
    [
        ("demo/web", None, "never"),  # built or loaded on the engine
        ("127.0.0.1:15000/demo/web", None, "missing"),
        ("registry.example.com/team/web", None, "missing"),
        ("localhost/web", None, "missing"),
        ("registry.example.com/team/web", "always", "always"),  # said: kept
        ("127.0.0.1:15000/demo/web", "never", "never"),
    ],
)
def test_pull_defaults_to_missing_when_the_image_names_a_registry(
    tmp_path: Path, image: str, pull: str | None, expected: str
) -> None:
    config = broken(lambda web: web.update({"image": image}))
    if pull is not None:
        config["pipelines"]["web"]["pull"] = pull
    pipeline = load_pipelines(write(tmp_path, config)).pipelines["web"]
    assert pipeline.pull == expected
    assert pipeline.prune_images is False
