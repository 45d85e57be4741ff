"""Secrets stay secret: marked in pipelines.yml, redacted from text and from every log line."""

from __future__ import annotations

import base64
import copy
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.domain.errors import ConfigError
from bot.domain.secrets import REDACTED, Redactor, redact
from bot.plugins import load_pipelines
from bot.settings import Settings, held_secrets, redact_logs, registry_secrets
from tests.bot.test_config import GOOD

SECRET = "s3cret-db-password-7f2a"


def with_environment(environment: dict[str, Any], **container: Any) -> dict[str, Any]:
    config = copy.deepcopy(GOOD)
    config["pipelines"]["web"]["container"]["environment"] = environment
    config["pipelines"]["web"]["container"].update(container)
    return config


def load(tmp_path: Path, config: dict[str, Any]) -> Any:
    path = tmp_path / "pipelines.yml"
    path.write_text(yaml.safe_dump(config))
    return load_pipelines(path)


def test_redact_replaces_each_value_and_slack_shaped_tokens() -> None:
    text = f"db={SECRET} token=xoxb-123-456-abc app=xapp-1-A0-xyz short=on"
    assert redact(text, [SECRET, "on"]) == (
        f"db={REDACTED} token={REDACTED} app={REDACTED} short=on"
    ), "values shorter than 4 characters are left alone"
    redactor = Redactor(["abcd"])
    redactor.add(["abcdefgh"])  # the longer one is replaced whole
    assert redactor.redact("x abcdefgh y abcd") == f"x {REDACTED} y {REDACTED}"


def test_inline_secret_values_reach_the_engine_plain_and_are_listed(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        with_environment({"PORT": "18080", "DB_PASSWORD": {"value": SECRET, "secret": True}}),
    )
    web = config.pipelines["web"]
    assert web.container["environment"] == {"PORT": "18080", "DB_PASSWORD": SECRET}
    assert web.secret_environment == ["DB_PASSWORD"]
    assert config.secret_values == [SECRET]


def test_environment_from_a_file_is_secret_and_relative_to_the_pipelines_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "web.env").write_text(
        f"# the database\nDB_PASSWORD={SECRET}\n\nAPI_KEY=k-123456=with=equals\n"
    )
    config = load(tmp_path, with_environment({"PORT": "18080"}, environment_from="secrets/web.env"))
    web = config.pipelines["web"]
    assert web.container["environment"] == {
        "PORT": "18080",
        "DB_PASSWORD": SECRET,
        "API_KEY": "k-123456=with=equals",
    }
    assert "environment_from" not in web.container, "the engine never sees the key"
    assert web.secret_environment == ["DB_PASSWORD", "API_KEY"]


@pytest.mark.parametrize(
    ("contents", "container", "message"),
    [
        (None, {}, "cannot read"),
        (f"DB_PASSWORD {SECRET}\n", {}, "line 1 is not NAME=value"),
        (f"PORT={SECRET}\n", {}, "PORT also set in container.environment"),
    ],
)
def test_environment_from_errors_name_the_key_never_the_value(
    tmp_path: Path, contents: str | None, container: dict[str, Any], message: str
) -> None:
    if contents is not None:
        (tmp_path / "web.env").write_text(contents)
    with pytest.raises(ConfigError) as error:
        load(tmp_path, with_environment({"PORT": "18080"}, environment_from="web.env", **container))
    assert "pipelines.web.container.environment_from: " in error.value.message
    assert message in error.value.message
    assert SECRET not in error.value.message


def test_bad_secret_markings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as mapping:
        load(tmp_path, with_environment({"DB": {"secret": True}}))
    assert "container.environment.DB: a mapping takes `value:`" in mapping.value.message
    config = with_environment({"PORT": "18080"})
    config["pipelines"]["web"]["secret_environment"] = ["NOPE"]
    with pytest.raises(ConfigError) as unknown:
        load(tmp_path, config)
    assert "secret_environment names NOPE, not set in container.environment" in (
        unknown.value.message
    )


def test_held_secrets_name_tokens_redis_and_registry_passwords(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = base64.b64encode(b"robot:registry-pass-99").decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"127.0.0.1:5000": {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert registry_secrets() == [auth, "registry-pass-99"]
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        slack_bot_token="xoxb-1-2-3",
        slack_signing_secret="signing-secret-abc",
        redis_url="redis://:redis-pass-42@127.0.0.1:6379/0",
    )
    assert held_secrets(settings) == [
        "xoxb-1-2-3",
        "signing-secret-abc",
        "redis-pass-42",
        auth,
        "registry-pass-99",
    ]


def test_every_log_line_is_redacted_even_in_handlers_added_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    redact_logs(["signing-secret-for-logs"])
    caplog.set_level(logging.DEBUG)
    log = logging.getLogger("bot.test_secrets")
    log.info("signing with %s and token %s", "signing-secret-for-logs", "xoxb-9-9-zz")
    try:
        raise RuntimeError("failed with signing-secret-for-logs")
    except RuntimeError:
        log.exception("boom")
    assert "signing-secret-for-logs" not in caplog.text and "xoxb-9-9-zz" not in caplog.text
    assert f"signing with {REDACTED} and token {REDACTED}" in caplog.text
    assert f"RuntimeError: failed with {REDACTED}" in caplog.text, "tracebacks too"
