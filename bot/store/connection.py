"""Connecting to Redis: one server (`redis://…`), or the primary of a Sentinel set.

`REDIS_URL=redis+sentinel://[[user]:password@]host:port[,host:port…]/service_name[/db]` asks
the Sentinels where the primary of `service_name` is, and asks again after a failover: the
client reconnects to the promoted replica by itself, retrying commands while the Sentinels
elect it. The password (if any) is the data nodes'; `?sentinel_password=…` is the Sentinels'.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

logger = logging.getLogger(__name__)

SENTINEL_SCHEME = "redis+sentinel://"
DEFAULT_SENTINEL_PORT = 26379

# The same client options for one server and for a Sentinel set's primary.
CLIENT_OPTIONS: dict[str, Any] = {
    "decode_responses": True,
    "socket_timeout": 5,
    "socket_connect_timeout": 3,
    "health_check_interval": 15,
    "retry_on_timeout": True,
}
# While the Sentinels agree the primary is down and promote a replica, commands fail with
# ConnectionError; each is retried with backoff for about FAILOVER_BUDGET_SECONDS.
FAILOVER_RETRIES = 40
FAILOVER_BACKOFF_CAP_SECONDS = 1.0
FAILOVER_BACKOFF_BASE_SECONDS = 0.05
SENTINEL_SOCKET_TIMEOUT_SECONDS = 1.0

_HOST_PORT = re.compile(
    r"^(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+))(?::(?P<port>\d+))?$"
)
_SERVICE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


@dataclass(frozen=True)
class SentinelAddress:
    """Where the Sentinels are and which primary to ask them for."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None


def is_sentinel_url(url: str) -> bool:
    return url.lower().startswith(SENTINEL_SCHEME)


def parse_sentinel_url(url: str) -> SentinelAddress:
    """`redis+sentinel://[[user]:pw@]h1:p1[,h2:p2]/service[/db][?sentinel_password=…]`.

    ValueError says what is wrong, never echoing a password.
    """
    if not is_sentinel_url(url):
        raise ValueError("a Sentinel URL starts with redis+sentinel://")
    rest = url[len(SENTINEL_SCHEME) :]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        credentials, netloc = netloc.rsplit("@", 1)
        user, has_password, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    sentinels = []
    for part in netloc.split(","):
        match = _HOST_PORT.match(part.strip())
        if not match:
            raise ValueError(f"invalid Sentinel address {part.strip()!r}: use host:port")
        host = match.group("ipv6") or match.group("host")
        port = int(match.group("port") or DEFAULT_SENTINEL_PORT)
        if not 0 < port < 65536:
            raise ValueError(f"invalid Sentinel port {port}")
        sentinels.append((host, port))
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2:
        raise ValueError(
            "name the primary's service after the Sentinels: "
            "redis+sentinel://host:port[,host:port]/service_name[/db]"
        )
    service = unquote(parts[0])
    if not _SERVICE.match(service):
        raise ValueError(f"invalid Sentinel service name {service!r}")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise ValueError(f"invalid database number {parts[1]!r}")
        db = int(parts[1])
    options = parse_qs(query)
    unknown = sorted(set(options) - {"sentinel_password"})
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} (known: sentinel_password)")
    sentinel_password = options.get("sentinel_password", [None])[0]
    return SentinelAddress(
        sentinels=tuple(sentinels),
        service=service,
        db=db,
        username=username,
        password=password,
        sentinel_password=sentinel_password,
    )


def check_url(url: str) -> str:
    """Validate REDIS_URL at start-up (settings): ValueError with what is wrong."""
    if is_sentinel_url(url):
        parse_sentinel_url(url)
        return url
    if not re.match(r"^(redis|rediss|unix)://", url, re.IGNORECASE):
        raise ValueError("use redis://, rediss://, unix:// or redis+sentinel://")
    return url


def connect(url: str) -> redis.Redis:
    """A client for REDIS_URL: the server it names, or the current primary of a Sentinel set."""
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **CLIENT_OPTIONS)
    address = parse_sentinel_url(url)
    sentinel_options: dict[str, Any] = {
        "socket_timeout": SENTINEL_SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": SENTINEL_SOCKET_TIMEOUT_SECONDS,
    }
    if address.sentinel_password:
        sentinel_options["password"] = address.sentinel_password
    # redis-py before 8 ships Sentinel untyped, 8 types it: through Any, mypy passes on both.
    sentinel_class: Any = Sentinel
    sentinel = sentinel_class(list(address.sentinels), sentinel_kwargs=sentinel_options)
    client: redis.Redis = sentinel.master_for(
        address.service,
        db=address.db,
        username=address.username,
        password=address.password,
        retry=Retry(
            ExponentialBackoff(
                cap=FAILOVER_BACKOFF_CAP_SECONDS, base=FAILOVER_BACKOFF_BASE_SECONDS
            ),
            FAILOVER_RETRIES,
        ),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        **CLIENT_OPTIONS,
    )
    logger.info(
        "Redis: primary %r of Sentinels %s, database %d",
        address.service,
        ",".join(f"{host}:{port}" for host, port in address.sentinels),
        address.db,
    )
    return client
