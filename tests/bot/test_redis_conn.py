"""REDIS_URL: one server, or a Sentinel set (`redis+sentinel://…`)."""

from __future__ import annotations

import pytest
import redis

from bot.domain.errors import SettingsError
from bot.settings import Settings, load_settings
from bot.store.connection import SentinelAddress, connect, parse_sentinel_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://127.0.0.1:26379/immune",
            SentinelAddress(sentinels=(("127.0.0.1", 26379),), service="immune"),
        ),
        (
            "redis+sentinel://10.0.0.1:5000,10.0.0.2,[::1]:5002/main/3",
            SentinelAddress(
                sentinels=(("10.0.0.1", 5000), ("10.0.0.2", 26379), ("::1", 5002)),
                service="main",
                db=3,
            ),
        ),
        (
            "redis+sentinel://:s3cr%40t@h:1/main?sentinel_password=other",
            SentinelAddress(
                sentinels=(("h", 1),),
                service="main",
                password="s3cr@t",
                sentinel_password="other",
            ),
        ),
        (
            "redis+sentinel://bot:pw@h:1/main/0",
            SentinelAddress(sentinels=(("h", 1),), service="main", username="bot", password="pw"),
        ),
    ],
)
def test_sentinel_urls_parse(url: str, expected: SentinelAddress) -> None:
    assert parse_sentinel_url(url) == expected


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://h:1", "name the primary's service"),
        ("redis+sentinel://h:1/", "name the primary's service"),
        ("redis+sentinel://h:1/main/x", "invalid database number"),
        ("redis+sentinel://h:1/main/0/extra", "name the primary's service"),
        ("redis+sentinel://h:99999/main", "invalid Sentinel port"),
        ("redis+sentinel://h:p/main", "invalid Sentinel address"),
        ("redis+sentinel://h:1/main?tls=1", "unknown option(s) tls"),
    ],
)
def test_bad_sentinel_urls_say_what_is_wrong(url: str, why: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_sentinel_url(url)
    assert why in str(raised.value)


def test_a_bad_redis_url_stops_start_up_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis+sentinel://:hunter2@h:1")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert raised.value.message.startswith("REDIS_URL: ")
    assert "hunter2" not in raised.value.message
    monkeypatch.setenv("REDIS_URL", "http://127.0.0.1:6379")
    with pytest.raises(SettingsError, match="REDIS_URL"):
        load_settings()


def test_replicas_waited_for_default_to_one_with_sentinel() -> None:
    plain = Settings(_env_file=None, redis_url="redis://127.0.0.1:6379/0")  # type: ignore[call-arg]
    sentinel = Settings(_env_file=None, redis_url="redis+sentinel://127.0.0.1:26379/immune")  # type: ignore[call-arg]
    forced = Settings(
        _env_file=None,  # type: ignore[call-arg]
        redis_url="redis+sentinel://127.0.0.1:26379/immune",
        redis_wait_replicas=0,
    )
    assert (plain.wait_replicas, sentinel.wait_replicas, forced.wait_replicas) == (0, 1, 0)


def test_connect_to_one_server_keeps_the_plain_client() -> None:
    client = connect("redis://127.0.0.1:9/0")
    assert isinstance(client, redis.Redis)
    assert client.connection_pool.connection_kwargs["decode_responses"] is True
