"""The `haproxy.cfg` the router expects, for the pipelines one HAProxy serves.

`python -m bot proxy-config` prints it; the scripts and tests run HAProxy with it. The bot never
writes or reloads it at run time: each backend is a row of empty server slots (`v<port>`, one
per port of `traffic.ports`) that the router fills through the runtime API.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from bot.domain.config import PipelinesConfig, Traffic, parse_address
from bot.domain.errors import ConfigError, UnknownPipeline
from bot.domain.traffic import SERVER_PREFIX

DEFAULT_EXPORTER = "127.0.0.1:8405"
"""Where HAProxy's Prometheus exporter listens unless told otherwise (`--exporter`)."""

EXPORTER_FRONTEND = "prometheus"

# What a unix socket path may hold unquoted in haproxy.cfg (and all we accept).


def traffic_group(config: PipelinesConfig, pipeline: str | None = None) -> dict[str, Traffic]:
    """The pipelines one HAProxy serves, by name: those sharing `pipeline`'s runtime API, or,
    with no pipeline named, every pipeline behind a proxy (they must share one).

    ConfigError (UnknownPipeline) says why there is no such group, listing the groups.
    """
    served = {
        name: p.traffic for name, p in sorted(config.pipelines.items()) if p.traffic is not None
    }
    if pipeline is not None:
        if pipeline not in config.pipelines:
            raise UnknownPipeline(
                f"unknown pipeline {pipeline!r} (known: {', '.join(sorted(config.pipelines))})"
            )
        own = config.pipelines[pipeline].traffic
        if own is None:
            behind = f" (behind a proxy: {', '.join(served)})" if served else ""
            raise ConfigError(f"pipeline {pipeline!r} has no traffic: block{behind}")
        return {name: t for name, t in served.items() if t.runtime_api == own.runtime_api}
    if not served:
        raise ConfigError(
            "no pipeline has a traffic: block, so no HAProxy serves any: "
            "there is no proxy config to print"
        )
    groups = _by_runtime_api(served)
    if len(groups) > 1:
        listed = "; ".join(f"{api}: {', '.join(names)}" for api, names in groups.items())
        raise ConfigError(
            f"the pipelines behind a proxy name {len(groups)} runtime APIs, one HAProxy each "
            f"({listed}): name a pipeline to print its HAProxy's config"
        )
    return served


def render(traffics: Mapping[str, Traffic], exporter: str = DEFAULT_EXPORTER) -> str:
    """A complete haproxy.cfg serving these pipelines (name -> traffic), which must share one
    runtime API; ConfigError when they cannot share one HAProxy."""
    if not traffics:
        raise ConfigError("no pipeline to serve: the config would have no frontend")
    _check_shared(traffics, exporter)
    runtime_api = next(iter(traffics.values())).runtime_api
    names = ", ".join(sorted(traffics))
    out = [
        f"# haproxy.cfg for immune's pipelines {names} (`python -m bot proxy-config`).",
        "# The bot changes this HAProxy only through its runtime API (the stats socket below): it",
        f"# fills each backend's empty slots {SERVER_PREFIX}<port>, one per port of traffic.ports, "
        "with",
        "# `set server`. Those changes are lost when HAProxy restarts; the bot puts them back.",
        "",
        "global",
        f"    stats socket {_stats_socket(runtime_api)}",
        "",
        "defaults",
        "    mode http",
        "    timeout connect 1s",
        "    timeout client 30s",
        "    timeout server 30s",
        "    timeout http-request 10s",
        "    timeout http-keep-alive 10s",
        "    timeout queue 5s",
        "    # A connection refused (or closed unanswered) by a version that is stopping is",
        "    # tried again on another server, so clients never see it.",
        "    retries 3",
        "    option redispatch",
        "    retry-on conn-failure empty-response",
    ]
    for name, traffic in sorted(traffics.items(), key=lambda item: item[1].backend):
        ports = traffic.ports
        out += [
            "",
            f"# pipeline {name}: {traffic.strategy}, versions on ports {ports}",
            f"frontend {traffic.backend}",
            f"    bind {traffic.listen}",
            f"    default_backend {traffic.backend}",
            "",
            f"backend {traffic.backend}",
            "    balance roundrobin",
            f"    # {SERVER_PREFIX}{ports.first} … {SERVER_PREFIX}{ports.last}: in maintenance, "
            "weight 0, until the bot fills them",
            f"    server-template {SERVER_PREFIX} {ports.first}-{ports.last} 127.0.0.1:1 "
            "disabled weight 0",
        ]
    out += [
        "",
        "# Per-server metrics (haproxy_server_http_responses_total, …) for the built-in KPIs.",
        f"frontend {EXPORTER_FRONTEND}",
        f"    bind {exporter}",
        "    http-request use-service prometheus-exporter if { path /metrics }",
        "    no log",
    ]
    return "\n".join(out) + "\n"


def _by_runtime_api(traffics: Mapping[str, Traffic]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name, traffic in sorted(traffics.items()):
        groups.setdefault(traffic.runtime_api, []).append(name)
    return groups


def _check_shared(traffics: Mapping[str, Traffic], exporter: str) -> None:
    """What the pipelines file cannot know alone: these pipelines in one HAProxy."""
    groups = _by_runtime_api(traffics)
    if len(groups) > 1:
        listed = "; ".join(f"{api}: {', '.join(names)}" for api, names in groups.items())
        raise ConfigError(
            f"one HAProxy has one runtime API; these pipelines name several: {listed}"
        )
    backends: dict[str, str] = {}
    for name, traffic in sorted(traffics.items()):
        other = backends.setdefault(traffic.backend, name)
        if other != name:
            raise ConfigError(
                f"pipelines {other!r} and {name!r} both use traffic.backend "
                f"{traffic.backend!r} in one HAProxy"
            )
    try:
        _, exporter_port = parse_address(exporter, "--exporter")
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    for name, traffic in traffics.items():
        taken = {traffic.listen_address[1]}
        if not traffic.runtime_api.startswith("/"):
            taken.add(parse_address(traffic.runtime_api, "traffic.runtime_api")[1])
        if exporter_port in taken or exporter_port in traffic.ports:
            raise ConfigError(
                f"the exporter's address {exporter} collides with pipeline {name!r}'s "
                "traffic.listen, traffic.runtime_api or traffic.ports"
            )


def _stats_socket(runtime_api: str) -> str:
    """The `stats socket` arguments: a unix socket only its owner may use, or TCP."""
    # The pipelines file allowed only plain socket paths and loopback addresses.
    if runtime_api.startswith("/"):
        return f"{runtime_api} mode 600 level admin"
    host, port = parse_address(runtime_api, "traffic.runtime_api")
    if ":" in host:
        return f"ipv6@[{host}]:{port} level admin"
    if re.fullmatch(r"[0-9.]+", host):
        return f"ipv4@{host}:{port} level admin"
    return f"{host}:{port} level admin"
