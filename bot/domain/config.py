"""The pipelines file's schema (`pipelines.yml`), validated with pydantic.

What every pipeline has is checked here; what only one deploy target or KPI source means (the
`container` options a Docker engine takes, the `swarm:` section) is checked by that plugin
(bot/plugins.py reads the file and asks each).
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from dataclasses import dataclass
from datetime import time as dt_time
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from bot.domain.errors import ConfigError
from bot.domain.images import parse_repository, registry_host

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
PIPELINE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parse_duration(value: object) -> float:
    """Seconds from `30s`, `5m`, `1h30m`, `250ms` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number with a unit, like 30s, 5m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip().replace(" ", "") if re.fullmatch(r"[\d.]+\s*\w+", value) else value
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(
                f"invalid duration {value!r}: use a number with a unit, like 30s, 5m, 1h or 1h30m"
            )
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    else:
        raise ValueError("a duration must be a number with a unit, like 30s, 5m or 1h")
    if seconds <= 0:
        raise ValueError(f"duration {value!r} must be greater than zero")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def parse_delay(value: object) -> float:
    """Like parse_duration, but zero (`0`, `0s`) is allowed: no wait."""
    zero = value == 0 and not isinstance(value, bool)
    if zero or (isinstance(value, str) and re.fullmatch(r"0+(\.0+)?(ms|s|m|h|d)?", value.strip())):
        return 0.0
    return parse_duration(value)


Delay = Annotated[float, BeforeValidator(parse_delay)]


class Strict(BaseModel):
    """A config section: unknown keys are errors, values are read-only once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


@dataclass(frozen=True)
class ConfigProblem:
    """What a plugin found wrong in a pipeline: a key path inside it, and why."""

    path: str
    message: str


class HealthCheck(Strict):
    url: str
    timeout: Duration = 20.0
    interval: Duration = 0.1

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"{url!r} is not an http(s) URL")
        return url


class TestGate(Strict):
    command: list[str]
    timeout: Duration = 60.0

    @field_validator("command", mode="before")
    @classmethod
    def _split(cls, command: object) -> object:
        if isinstance(command, str):
            return ["/bin/sh", "-c", command]
        return command

    @field_validator("command")
    @classmethod
    def _non_empty(cls, command: list[str]) -> list[str]:
        if not command:
            raise ValueError("the test command is empty")
        return command


class Approvals(Strict):
    required: int = Field(default=1, ge=1)
    approvers: list[str]
    expire: Duration = 1800.0

    @model_validator(mode="after")
    def _fail_closed(self) -> Approvals:
        # An approvals block nobody can satisfy must not silently mean "anyone may approve".
        if not self.approvers:
            raise ValueError("approvals.approvers is empty: list who may approve")
        if self.required > len(set(self.approvers)):
            raise ValueError(
                f"approvals.required is {self.required} but only "
                f"{len(set(self.approvers))} distinct approvers are listed"
            )
        return self


class Window(Strict):
    days: str = "mon-sun"
    hours: str = "00:00-24:00"

    @field_validator("days")
    @classmethod
    def _days(cls, days: str) -> str:
        parse_days(days)
        return days

    @field_validator("hours")
    @classmethod
    def _hours(cls, hours: str) -> str:
        parse_hours(hours)
        return hours

    def day_numbers(self) -> frozenset[int]:
        return parse_days(self.days)

    def time_range(self) -> tuple[dt_time, dt_time | None]:
        """Start and end of the window; end None means midnight (24:00)."""
        return parse_hours(self.hours)


def parse_days(days: str) -> frozenset[int]:
    """Weekday numbers (Monday 0) from `mon-thu`, `mon,wed,fri` or `sat-sun`."""
    result: set[int] = set()
    for part in days.lower().replace(" ", "").split(","):
        ends = part.split("-")
        if len(ends) > 2 or any(end not in DAY_NAMES for end in ends):
            raise ValueError(f"invalid days {days!r}: use names like mon-fri or mon,wed,fri")
        first, last = DAY_NAMES.index(ends[0]), DAY_NAMES.index(ends[-1])
        day = first
        while True:
            result.add(day)
            if day == last:
                break
            day = (day + 1) % 7
    return frozenset(result)


def parse_hours(hours: str) -> tuple[dt_time, dt_time | None]:
    match = re.fullmatch(r"(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})", hours.replace(" ", ""))
    if not match:
        raise ValueError(f"invalid hours {hours!r}: use HH:MM-HH:MM, like 09:00-17:00")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2 != 0):
        raise ValueError(f"invalid hours {hours!r}: times run from 00:00 to 24:00")
    start = dt_time(h1, m1)
    end = None if h2 == 24 else dt_time(h2, m2)
    if end is not None and end <= start:
        raise ValueError(f"invalid hours {hours!r}: the end must be after the start")
    return start, end


class Watch(Strict):
    interval: Duration = 5.0
    duration: Duration = 600.0
    warmup: int = Field(default=1, ge=0, description="polls recorded but not judged")

    @model_validator(mode="after")
    def _duration_covers_interval(self) -> Watch:
        if self.duration < self.interval:
            raise ValueError("watch.duration is shorter than watch.interval")
        return self


def parse_fraction(value: object) -> float:
    """`+50%`, `50%` or 0.5: a relative change, as a fraction."""
    if isinstance(value, bool):
        raise ValueError("a tolerance is a percentage like +50% or a fraction like 0.5")
    if isinstance(value, int | float):
        fraction = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*\+?\d+(\.\d+)?\s*%\s*", value):
        fraction = float(value.strip().lstrip("+").rstrip("%").strip()) / 100
    else:
        raise ValueError(f"invalid tolerance {value!r}: use a percentage like +50%")
    if fraction <= 0:
        raise ValueError(f"tolerance {value!r} must be greater than zero")
    return fraction


Fraction = Annotated[float, BeforeValidator(parse_fraction)]


class Kpi(Strict):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$")
    query: str = ""  # PromQL; behind a proxy it may use {version} and {baseline}
    builtin: Literal["error_rate", "latency_average"] | None = None  # from the proxy's metrics
    window: Duration = 30.0  # the rate window of a builtin KPI
    source: str = Field(default="prometheus", min_length=1)  # a registered KPI source
    max: float | None = None
    min: float | None = None
    for_polls: int = Field(default=1, ge=1, alias="for")
    no_data: Literal["breach", "ignore"] = "breach"
    # judge: compare (DESIGN.md "Judging"): the new version against the baseline.
    judge: Literal["threshold", "compare"] = "threshold"
    direction: Literal["increase", "decrease"] = "increase"  # which way is worse
    tolerance: Fraction | None = None  # relative worsening that matters (+50%)
    absolute: float | None = Field(default=None, gt=0)  # and/or an absolute difference
    confidence: float = Field(default=0.95, ge=0.5, lt=1)
    min_samples: int = Field(default=5, ge=3)

    @model_validator(mode="after")
    def _has_tolerance(self) -> Kpi:
        if bool(self.query.strip()) == (self.builtin is not None):
            raise ValueError(
                f"KPI {self.name!r} needs either a query or a builtin (error_rate, "
                "latency_average), not both"
            )
        if self.judge == "compare":
            if self.tolerance is None and self.absolute is None:
                raise ValueError(
                    f"KPI {self.name!r} (judge: compare) needs a tolerance (like +50%) "
                    "and/or an absolute difference"
                )
        elif self.tolerance is not None or self.absolute is not None:
            raise ValueError(f"KPI {self.name!r}: tolerance and absolute are for judge: compare")
        elif self.max is None and self.min is None:
            raise ValueError(f"KPI {self.name!r} needs max and/or min")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(f"KPI {self.name!r}: min is greater than max")
        return self

    def tolerance_text(self) -> str:
        if self.max is None and self.min is None:
            floors = [
                f"{self.tolerance:+.0%}" if self.tolerance is not None else "",
                f"+{self.absolute:g}" if self.absolute is not None else "",
            ]
            worse = "higher" if self.direction == "increase" else "lower"
            return f"{self.name} no more than {' and '.join(f for f in floors if f)} {worse} than the baseline"
        if self.max is not None and self.min is not None:
            return f"{self.min:g} ≤ {self.name} ≤ {self.max:g}"
        if self.max is not None:
            return f"{self.name} ≤ {self.max:g}"
        return f"{self.name} ≥ {self.min:g}"

    def breaches(self, value: float) -> bool:
        return (self.max is not None and value > self.max) or (
            self.min is not None and value < self.min
        )


def parse_address(value: str, key: str) -> tuple[str, int]:
    """`127.0.0.1:8080` or `[::1]:8080` as (host, port)."""
    match = re.fullmatch(r"\[([0-9a-fA-F:]+)\]:(\d{1,5})|([^:\s\[\]]+):(\d{1,5})", value.strip())
    if not match:
        raise ValueError(f"{key} {value!r}: use host:port, like 127.0.0.1:8080")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        raise ValueError(f"{key} {value!r}: the port must be 1-65535")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PortRange(BaseModel):
    """`18100-18119`: the loopback ports versions of one pipeline may take, both ends in."""

    model_config = ConfigDict(frozen=True)

    first: int
    last: int

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: object) -> object:
        if isinstance(value, str):
            match = re.fullmatch(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*", value)
            if not match:
                raise ValueError(f"ports {value!r}: use a range like 18100-18119")
            return {"first": int(match.group(1)), "last": int(match.group(2))}
        return value

    @model_validator(mode="after")
    def _ordered(self) -> PortRange:
        if not 1024 <= self.first <= self.last <= 65535:
            raise ValueError(
                f"ports {self.first}-{self.last}: use a range within 1024-65535, low end first"
            )
        if self.last - self.first < 1:
            raise ValueError("ports: give at least two ports (the old and the new version)")
        return self

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def numbers(self) -> range:
        return range(self.first, self.last + 1)

    def overlaps(self, other: PortRange) -> bool:
        return self.first <= other.last and other.first <= self.last

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


class Traffic(Strict):
    """How a pipeline is served through a proxy (DESIGN.md, "Traffic")."""

    proxy: Literal["haproxy"] = "haproxy"
    listen: str
    runtime_api: str
    backend: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    ports: PortRange
    strategy: Literal["blue_green", "canary"] = "blue_green"
    steps: list[int] = [5, 25, 50, 100]
    step_duration: Duration = 60.0
    drain: Delay = 10.0
    # A canary step that ended with a KPI it could not judge (not enough data) holds and asks
    # the channel; `inconclusive` decides alone after `inconclusive_after` (default: two
    # steps' length) if nobody answers.
    inconclusive: Literal["rollback", "promote", "hold"] = "rollback"
    inconclusive_after: Duration | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, listen: str) -> str:
        parse_address(listen, "traffic.listen")
        return listen

    @field_validator("runtime_api")
    @classmethod
    def _runtime_api(cls, where: str) -> str:
        if where.startswith("/"):
            # It is written into haproxy.cfg as it is: no character the config would read.
            if not re.fullmatch(r"/[A-Za-z0-9_./+@:-]*", where):
                raise ValueError(
                    f"traffic.runtime_api {where!r}: use a socket path of letters, digits and "
                    "_ . / + @ : - (no spaces, quotes or #)"
                )
            return where
        host, _ = parse_address(where, "traffic.runtime_api")
        if not is_loopback(host):
            raise ValueError(
                f"traffic.runtime_api {where!r}: HAProxy's admin socket must be on loopback "
                "(127.0.0.1 or ::1) or a unix socket; it accepts every command unauthenticated"
            )
        return where

    @field_validator("backend")
    @classmethod
    def _not_the_exporter(cls, backend: str) -> str:
        if backend == "prometheus":
            raise ValueError(
                "traffic.backend 'prometheus' is the exporter's frontend: pick another"
            )
        return backend

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[int]) -> list[int]:
        if not steps:
            raise ValueError(
                "traffic.steps is empty: list the canary's percentages, like [5, 50, 100]"
            )
        if any(not 1 <= step <= 100 for step in steps):
            raise ValueError("traffic.steps are percentages from 1 to 100")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError("traffic.steps must grow step by step, like [5, 25, 50, 100]")
        if steps[-1] != 100:
            raise ValueError("traffic.steps must end at 100 (the new version takes all traffic)")
        return steps

    @model_validator(mode="after")
    def _listen_outside_ports(self) -> Traffic:
        _, port = self.listen_address
        if port in self.ports:
            raise ValueError(
                f"traffic.listen port {port} is inside traffic.ports {self.ports}: "
                "clients and versions cannot share a port"
            )
        if not self.runtime_api.startswith("/"):
            _, api_port = parse_address(self.runtime_api, "traffic.runtime_api")
            if api_port in self.ports or api_port == port:
                raise ValueError(
                    f"traffic.runtime_api port {api_port} collides with traffic.listen "
                    "or traffic.ports"
                )
        return self

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_address(self.listen, "traffic.listen")

    @property
    def decides_after(self) -> float:
        """Seconds a held canary step waits for a person before `inconclusive` decides."""
        return self.inconclusive_after or 2 * self.step_duration

    @property
    def plan(self) -> list[int]:
        """The new version's share of requests, step by step (blue/green: all at once)."""
        return list(self.steps) if self.strategy == "canary" else [100]


class Pipeline(Strict):
    """One pipeline. Keys beyond these are target sections (`swarm:`), which the plugin
    registry accepts only for registered targets and each target validates itself."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    channel: str = Field(min_length=1)
    target: str = Field(default="docker", min_length=1)  # a registered deploy target
    image: str = Field(min_length=1)
    container: dict[str, Any]
    health: HealthCheck
    tests: TestGate | None = None
    deployers: list[str] | None = None
    # Who sees the pipeline on the Home tab besides its deployers, approvers and the admins;
    # absent: everyone.
    viewers: list[str] | None = None
    approvals: Approvals | None = None
    windows: list[Window] | None = None
    watch: Watch = Watch()
    kpis: list[Kpi] = []
    auto_rollback: bool = True
    hardened: bool = True
    # Default: `missing` when `image` names a registry host, else `never` (see _default_pull).
    pull: Literal["never", "missing", "always"] = "never"
    # A pull that receives nothing from the engine for this long has stalled: the rollout
    # fails with the old version serving.
    pull_timeout: Duration = Field(default=300.0, gt=0)
    keep_versions: int = Field(default=3, ge=1, le=50)
    # Remove the images of versions past keep_versions that no container uses (never the last
    # good one's).
    prune_images: bool = False
    command_channels: list[str] | None = None
    traffic: Traffic | None = None
    # Names of container.environment variables whose values are secret: never shown in Slack,
    # /pipeline, the exports or logs. Filled from `{value: …, secret: true}` entries and
    # `container.environment_from` (read by bot.plugins), or listed here.
    secret_environment: list[str] = []

    @model_validator(mode="before")
    @classmethod
    def _inline_secrets(cls, data: Any) -> Any:
        """`NAME: {value: …, secret: true}` in container.environment becomes `NAME: …`, its
        name listed in secret_environment (the engine takes plain strings)."""
        if not isinstance(data, dict) or not isinstance(data.get("container"), dict):
            return data
        container = data["container"]
        environment = container.get("environment")
        if not isinstance(environment, dict):
            return data
        secret = list(data.get("secret_environment") or [])
        plain: dict[str, Any] = {}
        for name, value in environment.items():
            if not isinstance(value, dict):
                plain[name] = value
                continue
            if "value" not in value or set(value) - {"value", "secret"}:
                raise ValueError(
                    f"container.environment.{name}: a mapping takes `value:` and "
                    "`secret: true` (or a plain string)"
                )
            if not isinstance(value["value"], str | int | float):
                raise ValueError(f"container.environment.{name}.value must be a string")
            plain[name] = str(value["value"])
            if value.get("secret") is True and name not in secret:
                secret.append(name)
        return {
            **data,
            "container": {**container, "environment": plain},
            "secret_environment": secret,
        }

    @model_validator(mode="after")
    def _secrets_are_set(self) -> Pipeline:
        environment = self.container.get("environment")
        names = set(environment) if isinstance(environment, dict) else set()
        missing = [name for name in self.secret_environment if name not in names]
        if missing:
            raise ValueError(
                f"secret_environment names {', '.join(missing)}, not set in "
                "container.environment (as a mapping)"
            )
        return self

    @property
    def secret_values(self) -> list[str]:
        """The values of the secret variables, to redact wherever text leaves the bot."""
        environment = self.container.get("environment") or {}
        return [str(environment[name]) for name in self.secret_environment]

    @field_validator("image")
    @classmethod
    def _image_without_tag(cls, image: str) -> str:
        return parse_repository(image)

    @model_validator(mode="before")
    @classmethod
    def _default_pull(cls, data: Any) -> Any:
        # An image from a registry is pulled when the engine lacks it; one without a registry
        # host is taken as built or loaded on the engine, as before registries were supported.
        if isinstance(data, dict) and "pull" not in data and isinstance(data.get("image"), str):
            return {**data, "pull": "missing" if registry_host(data["image"]) else "never"}
        return data

    @field_validator("container")
    @classmethod
    def _container_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(options.get("name"), str) or not PIPELINE_NAME.match(
            options.get("name", "")
        ):
            raise ValueError("container.name is required (letters, digits, - and _)")
        for reserved in ("image", "detach", "labels_override"):
            if reserved in options:
                raise ValueError(f"container.{reserved} is set by immune, not the config")
        return options

    @model_validator(mode="after")
    def _kpi_names_unique(self) -> Pipeline:
        names = [kpi.name for kpi in self.kpis]
        if len(names) != len(set(names)):
            raise ValueError("KPI names must be unique within a pipeline")
        return self

    @model_validator(mode="after")
    def _proxy_kpis(self) -> Pipeline:
        for kpi in self.kpis if self.traffic is None else []:
            if (
                kpi.builtin
                or kpi.judge == "compare"
                or "{version}" in kpi.query
                or "{baseline}" in kpi.query
            ):
                raise ValueError(
                    f"KPI {kpi.name!r} reads the proxy's per-version metrics (builtin, "
                    "judge: compare, {version} or {baseline}): the pipeline needs a traffic block"
                )
        return self

    @model_validator(mode="after")
    def _port_per_version(self) -> Pipeline:
        # Each version listens on its own port, so a health URL on one fixed port would check
        # whichever version holds it, not the new one.
        if self.traffic is not None and "{port}" not in self.health.url:
            raise ValueError(
                "health.url must contain {port} when traffic is set "
                "(each version listens on its own port), like http://127.0.0.1:{port}/healthz"
            )
        return self

    def visible_to(self, user: str) -> bool:
        """Whether `user` sees this pipeline on the Home tab (admins are asked elsewhere)."""
        if self.viewers is None:
            return True
        approvers = self.approvals.approvers if self.approvals is not None else []
        return user in self.viewers or user in (self.deployers or []) or user in approvers

    def section(self, name: str) -> dict[str, Any]:
        """A target's own section of this pipeline (`swarm:`), as written; {} when absent."""
        value = (self.model_extra or {}).get(name)
        return dict(value) if isinstance(value, dict) else {}

    @property
    def section_names(self) -> list[str]:
        return sorted(self.model_extra or {})

    def may_command_from(self, channel_id: str) -> bool:
        allowed = self.command_channels if self.command_channels is not None else [self.channel]
        return "*" in allowed or channel_id in allowed


class PipelinesConfig(Strict):
    timezone: str = "UTC"
    admins: list[str] = []
    pipelines: dict[str, Pipeline]

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {zone!r} (use an IANA name)") from exc
        return zone

    @field_validator("pipelines")
    @classmethod
    def _names(cls, pipelines: dict[str, Pipeline]) -> dict[str, Pipeline]:
        if not pipelines:
            raise ValueError("no pipelines are defined")
        for name in pipelines:
            if not PIPELINE_NAME.match(name):
                raise ValueError(f"pipeline name {name!r}: use lower-case letters, digits, - or _")
        containers = [p.container["name"] for p in pipelines.values()]
        if len(containers) != len(set(containers)):
            raise ValueError("two pipelines use the same container.name")
        _check_traffic_ports(pipelines)
        return pipelines

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def secret_values(self) -> list[str]:
        """Every pipeline's secret environment values."""
        return [value for pipeline in self.pipelines.values() for value in pipeline.secret_values]

    def is_admin(self, user_id: str) -> bool:
        return user_id in self.admins


def _check_traffic_ports(pipelines: dict[str, Pipeline]) -> None:
    """No two pipelines may hand out the same port, or listen where another's versions run."""
    served = [(name, p.traffic) for name, p in sorted(pipelines.items()) if p.traffic is not None]
    for i, (name, traffic) in enumerate(served):
        for other_name, other in served[i + 1 :]:
            if traffic.ports.overlaps(other.ports):
                raise ValueError(
                    f"pipelines {name!r} and {other_name!r}: traffic.ports "
                    f"{traffic.ports} and {other.ports} overlap"
                )
            if traffic.runtime_api == other.runtime_api and traffic.backend == other.backend:
                raise ValueError(
                    f"pipelines {name!r} and {other_name!r} both use backend "
                    f"{traffic.backend!r} of the HAProxy at {traffic.runtime_api}"
                )
            if traffic.listen_address == other.listen_address:
                raise ValueError(
                    f"pipelines {name!r} and {other_name!r} both listen on {traffic.listen}"
                )
        for other_name, other in served:
            if other_name != name and traffic.listen_address[1] in other.ports:
                raise ValueError(
                    f"pipeline {name!r}: traffic.listen {traffic.listen} is inside "
                    f"{other_name!r}'s traffic.ports {other.ports}"
                )


def parse_schema(raw: object, source: str = "pipelines.yml") -> PipelinesConfig:
    """The file's contents checked against the schema; ConfigError names each key path."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'pipelines' key")
    try:
        return PipelinesConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from exc


def problems_of(exc: ValidationError, prefix: str = "") -> list[ConfigProblem]:
    """pydantic's errors as key paths (`prefix` first) and plain messages."""
    problems = []
    for error in exc.errors():
        parts = [*([prefix] if prefix else []), *(str(part) for part in error["loc"])]
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        problems.append(ConfigProblem(".".join(parts) or "(top level)", message))
    return problems


def format_problems(source: str, problems: list[ConfigProblem]) -> str:
    return "\n".join(f"{source}: {problem.path}: {problem.message}" for problem in problems)


def format_validation_error(source: str, exc: ValidationError) -> str:
    return format_problems(source, problems_of(exc))
