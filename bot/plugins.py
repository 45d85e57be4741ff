"""The plugin registry: deploy targets and KPI sources, found by name; and the pipelines file,
checked by the domain's schema and then by the plugins each pipeline names.

Adding a target (or a KPI source) is one module in bot/targets/ (bot/kpi_sources/) and one
line in `default_registry()`; docs/ARCHITECTURE.md walks through it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bot.domain.config import (
    ConfigProblem,
    Pipeline,
    PipelinesConfig,
    format_problems,
    parse_schema,
)
from bot.domain.errors import ConfigError
from bot.kpi_sources.prometheus import PrometheusSource
from bot.ports import KpiSource, Target
from bot.settings import Settings
from bot.targets import docker_host, swarm
from bot.targets.engine import connect_engine

T = TypeVar("T")


class Shared:
    """What the plugins of one bot share (one engine connection for both Docker targets)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._made: dict[str, Any] = {}

    def close(self) -> None:
        """Close what was made (the engine client's connections) when the bot stops."""
        for made in self._made.values():
            close = getattr(made, "close", None)
            if callable(close):
                close()
        self._made.clear()

    def get(self, key: str, make: Callable[[], T]) -> T:
        if key not in self._made:
            self._made[key] = make()
        made: T = self._made[key]
        return made


@dataclass(frozen=True)
class TargetPlugin:
    name: str  # the pipeline's `target:`
    build: Callable[[Shared], Target]
    # The pipeline's target-specific keys (`container`, its own section), as key paths.
    check: Callable[[Pipeline], list[ConfigProblem]] = lambda pipeline: []
    health_key: str = ""  # its /healthz entry; targets on one engine share one
    # Runs versions side by side on their own ports (bot.ports.SideBySideTarget), so a
    # pipeline on it may sit behind a proxy (`traffic:`).
    side_by_side: bool = False


@dataclass(frozen=True)
class KpiSourcePlugin:
    name: str  # a KPI's `source:`
    build: Callable[[Shared], KpiSource]
    health_key: str = ""


@dataclass
class Registry:
    targets: dict[str, TargetPlugin] = field(default_factory=dict)
    sources: dict[str, KpiSourcePlugin] = field(default_factory=dict)

    def add_target(self, plugin: TargetPlugin) -> Registry:
        self.targets[plugin.name] = plugin
        return self

    def add_source(self, plugin: KpiSourcePlugin) -> Registry:
        self.sources[plugin.name] = plugin
        return self

    def used(self, config: PipelinesConfig) -> tuple[list[TargetPlugin], list[KpiSourcePlugin]]:
        """What a bot builds (and /healthz probes): the targets its pipelines name, since an
        engine may not exist where it is not used; every KPI source, since building one dials
        nothing and /healthz has always said whether Prometheus answers."""
        targets = sorted({p.target for p in config.pipelines.values()})
        return [self.targets[t] for t in targets], [self.sources[s] for s in sorted(self.sources)]


def _engine(shared: Shared) -> Any:
    return shared.get("docker-engine", lambda: connect_engine(shared.settings.docker_host))


def _lookup_engine(shared: Shared) -> Any:
    """The engine with a short timeout, for tag lookups inside Slack's 3 s ack."""
    return shared.get(
        "docker-engine-lookups",
        lambda: connect_engine(
            shared.settings.docker_host, timeout=shared.settings.registry_lookup_seconds
        ),
    )


def default_registry() -> Registry:
    return (
        Registry()
        .add_target(
            TargetPlugin(
                name="docker",
                build=lambda shared: docker_host.DockerHostTarget(
                    _engine(shared), lookup_client=_lookup_engine(shared)
                ),
                check=docker_host.check_pipeline,
                health_key="docker",
                side_by_side=True,
            )
        )
        .add_target(
            TargetPlugin(
                name="swarm",
                build=lambda shared: swarm.SwarmTarget(
                    _engine(shared), lookup_client=_lookup_engine(shared)
                ),
                check=swarm.check_pipeline,
                health_key="docker",
            )
        )
        .add_source(
            KpiSourcePlugin(
                name="prometheus",
                build=lambda shared: PrometheusSource(shared.settings.prometheus_url),
                health_key="prometheus",
            )
        )
    )


# The pipelines file ----------------------------------------------------------------------


def load_pipelines(path: str | Path, registry: Registry | None = None) -> PipelinesConfig:
    """Read and validate the pipelines file; ConfigError names the file, key path and problem."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found (set PIPELINES_FILE)") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from exc
    return parse_pipelines(raw, source=str(path), registry=registry)


def parse_pipelines(
    raw: object, source: str = "pipelines.yml", registry: Registry | None = None
) -> PipelinesConfig:
    """The schema first, then each pipeline's target and KPI sources check what is theirs."""
    registry = registry or default_registry()
    raw = _read_environment_files(raw, source)
    config = parse_schema(raw, source)
    problems: list[ConfigProblem] = []
    for name, pipeline in config.pipelines.items():
        problems += [
            ConfigProblem(f"pipelines.{name}.{problem.path}", problem.message)
            for problem in _pipeline_problems(pipeline, registry)
        ]
    if problems:
        raise ConfigError(format_problems(source, problems))
    return config


def _read_environment_files(raw: object, source: str) -> object:
    """`container.environment_from: <file>` (relative to the pipelines file): its `NAME=value`
    lines join container.environment, every one of them secret. The file is read here, once
    at load, so the engine gets plain values and the domain never reads a file."""
    if not isinstance(raw, dict) or not isinstance(raw.get("pipelines"), dict):
        return raw
    base = Path(source).parent
    pipelines = dict(raw["pipelines"])
    problems: list[ConfigProblem] = []
    for name, pipeline in pipelines.items():
        if not isinstance(pipeline, dict) or not isinstance(pipeline.get("container"), dict):
            continue
        container = dict(pipeline["container"])
        if "environment_from" not in container:
            continue
        where = f"pipelines.{name}.container.environment_from"
        file = container.pop("environment_from")
        environment = container.get("environment") or {}
        if not isinstance(file, str) or not file:
            problems.append(ConfigProblem(where, "must name a file of NAME=value lines"))
            continue
        if not isinstance(environment, dict):
            problems.append(
                ConfigProblem(where, "needs container.environment as a mapping, not a list")
            )
            continue
        path = base / file
        try:
            read = _environment_file(path.read_text(encoding="utf-8"))
        except OSError as exc:
            problems.append(ConfigProblem(where, f"cannot read {path}: {exc.strerror}"))
            continue
        except ValueError as exc:
            problems.append(ConfigProblem(where, f"{path}: {exc}"))
            continue
        twice = sorted(set(read) & set(environment))
        if twice:
            problems.append(
                ConfigProblem(where, f"{', '.join(twice)} also set in container.environment")
            )
            continue
        container["environment"] = {**environment, **read}
        secret = list(pipeline.get("secret_environment") or [])
        pipelines[name] = {
            **pipeline,
            "container": container,
            "secret_environment": [*secret, *(n for n in read if n not in secret)],
        }
    if problems:
        raise ConfigError(format_problems(source, problems))
    return {**raw, "pipelines": pipelines}


def _environment_file(text: str) -> dict[str, str]:
    """Docker's env-file format: `NAME=value` per line; blank lines and `#` comments skipped.
    Errors name the line, never its value."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, equals, value = stripped.partition("=")
        if not equals or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"line {number} is not NAME=value")
        values[name] = value
    return values


def _pipeline_problems(pipeline: Pipeline, registry: Registry) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    target = registry.targets.get(pipeline.target)
    if target is None:
        problems.append(
            ConfigProblem(
                "target",
                f"unknown target {pipeline.target!r} (known: "
                f"{', '.join(sorted(registry.targets))})",
            )
        )
    else:
        problems += target.check(pipeline)
        if pipeline.traffic is not None and not target.side_by_side:
            problems.append(
                ConfigProblem(
                    "traffic",
                    f"target {pipeline.target!r} runs its own rollout and cannot sit behind "
                    "the bot's proxy (traffic: is for target: docker)",
                )
            )
    # Sections of the registered targets are theirs (a `swarm:` section may stay while a
    # pipeline tries target: docker); any other extra key is a typo.
    problems += [
        ConfigProblem(key, "unknown key")
        for key in pipeline.section_names
        if key not in registry.targets
    ]
    for index, kpi in enumerate(pipeline.kpis):
        if kpi.source not in registry.sources:
            problems.append(
                ConfigProblem(
                    f"kpis.{index}.source",
                    f"unknown KPI source {kpi.source!r} (known: {', '.join(sorted(registry.sources))})",
                )
            )
    return problems
