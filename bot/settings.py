"""Process settings from the environment (and `.env`), validated with pydantic-settings."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.domain.errors import SettingsError
from bot.domain.secrets import Redactor
from bot.store.connection import check_url, is_sentinel_url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    slack_bot_token: str | None = None
    slack_signing_secret: str | None = None
    slack_app_token: str | None = None
    slack_api_url: str = "https://slack.com/api/"
    # Skip auth.test at start-up: only for local runs against an emulator that starts later.
    slack_token_verification: bool = True
    # Slack failing (bot/slack/link.py): each Web API call gives up after the timeout; while
    # Slack fails, the first waiting message is tried again every SLACK_RETRY_SECONDS, and a
    # message that has waited SLACK_GIVE_UP_SECONDS is given up with a log line.
    slack_timeout_seconds: float = Field(default=10.0, ge=1, le=120)
    slack_retry_seconds: float = Field(default=5.0, gt=0, le=600)
    slack_give_up_seconds: float = Field(default=3600.0, gt=0)

    redis_url: str = "redis://127.0.0.1:6379/0"  # or redis+sentinel://h:p[,h:p]/service[/db]
    redis_prefix: str = Field(default="immune", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    docker_host: str | None = None
    prometheus_url: str = "http://127.0.0.1:9090"
    pipelines_file: str = "pipelines.yml"

    host: str = "0.0.0.0"
    port: int = Field(default=3000, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    # Tuning; defaults suit one bot on one host.
    rollout_workers: int = Field(default=8, ge=1, le=64)
    http_threads: int = Field(default=16, ge=1, le=256)
    lock_ttl_seconds: float = Field(default=15.0, gt=1)
    # How long a rollout whose Redis stopped answering mid-swap waits for it before its
    # outcome; past it, the rollout is left to recovery (reconciled with the engine later).
    redis_outage_seconds: float = Field(default=60.0, gt=0)
    audit_max_age_days: float = Field(default=90.0, gt=0)
    # How often the Home tabs of people who opened theirs in the last hour are republished
    # when what they show changed.
    home_refresh_seconds: float = Field(default=5.0, gt=0)
    # How often every replica looks for queued deploys that may start (pipeline free, window
    # open); each starts exactly once whichever replica finds it.
    queue_check_seconds: float = Field(default=2.0, gt=0)
    # How long a rollout whose engine stops answering mid-way waits for it to come back
    # (then finishes or undoes the swap once); past it the rollout fails, and the version
    # Redis records as live is put back when the engine returns.
    engine_wait_seconds: float = Field(default=60.0, ge=0)
    # How long /deploy waits for the registry to say which digest a tag points at (one
    # manifest request, inside Slack's 3 s ack); past it the rollout resolves the tag itself.
    registry_lookup_seconds: float = Field(default=1.5, gt=0, le=2.5)
    # Replicas that must hold a write before Slack hears of it (Redis WAIT); unset: 1 with a
    # Sentinel REDIS_URL, 0 (no WAIT) otherwise.
    redis_wait_replicas: int | None = Field(default=None, ge=0, le=16)
    redis_wait_timeout_ms: int = Field(default=500, ge=1, le=60_000)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, level: object) -> object:
        return level.upper() if isinstance(level, str) else level

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: str) -> str:
        return check_url(url)

    @property
    def wait_replicas(self) -> int:
        """Replicas each answer to Slack waits for (REDIS_WAIT_REPLICAS, or the URL's default)."""
        if self.redis_wait_replicas is not None:
            return self.redis_wait_replicas
        return 1 if is_sentinel_url(self.redis_url) else 0

    @field_validator("slack_api_url")
    @classmethod
    def _trailing_slash(cls, url: str) -> str:
        return url if url.endswith("/") else url + "/"

    @property
    def socket_mode(self) -> bool:
        return bool(self.slack_app_token)

    def require_slack(self) -> None:
        """Refuse to start without what Slack needs, naming the missing setting."""
        if not self.slack_bot_token:
            raise SettingsError("SLACK_BOT_TOKEN is not set (a bot token, xoxb-…)")
        if not self.slack_bot_token.startswith("xoxb-"):
            raise SettingsError("SLACK_BOT_TOKEN must be a bot token starting with xoxb-")
        if self.socket_mode:
            assert self.slack_app_token is not None
            if not self.slack_app_token.startswith("xapp-"):
                raise SettingsError(
                    "SLACK_APP_TOKEN must be an app-level token starting with xapp-"
                )
        elif not self.slack_signing_secret:
            raise SettingsError(
                "SLACK_SIGNING_SECRET is not set (required in HTTP mode; "
                "find it under Basic Information in your Slack app)"
            )


def load_settings() -> Settings:
    """Settings, or SettingsError naming the first bad variable in one line."""
    try:
        return Settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]).upper() if error["loc"] else "settings"
        message = error["msg"].removeprefix("Value error, ")
        raise SettingsError(f"{name}: {message}") from exc


def configure_logging(level: str, secrets: Iterable[str] = ()) -> None:
    redact_logs(secrets)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s",
    )


# Secrets in logs --------------------------------------------------------------------------

_LOG_REDACTOR = Redactor()


def held_secrets(settings: Settings) -> list[str]:
    """The tokens and passwords the bot holds: Slack's tokens and signing secret, Redis'
    passwords, and the registry credentials in the Docker client config (DOCKER_CONFIG)."""
    values = [
        settings.slack_bot_token or "",
        settings.slack_signing_secret or "",
        settings.slack_app_token or "",
    ]
    url = urlsplit(settings.redis_url)
    values.append(url.password or "")
    values += parse_qs(url.query).get("sentinel_password", [])
    return [value for value in values + registry_secrets() if value]


def registry_secrets(config_dir: str | None = None) -> list[str]:
    """Passwords and tokens of `auths` in the Docker client config (what `docker login`
    wrote), as the docker SDK finds it: $DOCKER_CONFIG/config.json or ~/.docker/config.json."""
    where = config_dir or os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    try:
        config: Any = json.loads((Path(where) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    auths = config.get("auths") if isinstance(config, dict) else None
    values: list[str] = []
    for entry in auths.values() if isinstance(auths, dict) else []:
        if not isinstance(entry, dict):
            continue
        values += [
            str(entry[key])
            for key in ("auth", "password", "identitytoken", "registrytoken")
            if entry.get(key)
        ]
        try:
            user_password = base64.b64decode(str(entry.get("auth") or ""), validate=True)
        except (binascii.Error, ValueError):
            continue
        values.append(user_password.decode("utf-8", "replace").partition(":")[2])
    return values


def redact_logs(values: Iterable[str]) -> None:
    """Redact `values` (and anything shaped like a Slack token) from every log line.

    The redaction is a hook on the log record factory, installed once per process: every
    record is redacted as it is made, so every handler gets it, including handlers added
    after start (a test's, a library's), which a filter on today's handlers would miss.
    """
    _LOG_REDACTOR.add(values)
    factory = logging.getLogRecordFactory()
    if getattr(factory, "redacts_secrets", False):
        return

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        _redact_record(record)
        return record

    make_record.redacts_secrets = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_record)


def _redact_record(record: logging.LogRecord) -> None:
    message = record.getMessage()
    redacted = _LOG_REDACTOR.redact(message)
    if redacted != message:
        record.msg, record.args = redacted, None
    if record.exc_info and record.exc_info[1] is not None:
        # Formatters use exc_text when it is set: the traceback is formatted (and redacted)
        # once here, as logging.Formatter.formatException would.
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        record.exc_text = _LOG_REDACTOR.redact(text)
    if record.stack_info:
        record.stack_info = _LOG_REDACTOR.redact(record.stack_info)
