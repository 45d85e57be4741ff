"""`python -m bot proxy-config`: a complete haproxy.cfg that the real haproxy accepts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.__main__ import main
from bot.domain.config import PipelinesConfig
from bot.domain.errors import ConfigError, UnknownPipeline
from bot.plugins import parse_pipelines
from bot.traffic.haproxy import RuntimeApi
from bot.traffic.haproxy_config import render, traffic_group
from tests.support.services import HAProxyServer, free_port, free_port_range


def pipeline(name: str, traffic: dict[str, Any] | None) -> dict[str, Any]:
    """A docker pipeline; behind a proxy when `traffic` is given."""
    raw: dict[str, Any] = {
        "channel": "C0DEPLOY",
        "image": "demo/web",
        "container": {"name": f"pc-{name}", "network_mode": "host"},
        "health": {"url": "http://127.0.0.1:{port}/healthz"},
    }
    if traffic is not None:
        raw["traffic"] = traffic
    else:
        raw["health"] = {"url": "http://127.0.0.1:18080/healthz"}
    return raw


def traffic(runtime_api: str, backend: str, slots: int = 4, **extra: Any) -> dict[str, Any]:
    first = free_port_range(slots)
    return {
        "listen": f"127.0.0.1:{free_port()}",
        "runtime_api": runtime_api,
        "backend": backend,
        "ports": f"{first}-{first + slots - 1}",
        **extra,
    }


def config(**pipelines: dict[str, Any]) -> PipelinesConfig:
    return parse_pipelines({"pipelines": pipelines})


def check(haproxy_server: HAProxyServer, text: str, tmp_path: Path) -> None:
    path = tmp_path / "checked.cfg"
    path.write_text(text)
    result = haproxy_server.check_config(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout + result.stderr


def test_config_is_valid_and_has_what_the_router_needs(
    haproxy_server: HAProxyServer, tmp_path: Path
) -> None:
    block = traffic("/run/immune-test/haproxy.sock", "web", slots=20, strategy="canary")
    served = traffic_group(config(web=pipeline("web", block), plain=pipeline("plain", None)))
    assert list(served) == ["web"]
    text = render(served, exporter="127.0.0.1:18405")
    check(haproxy_server, text, tmp_path)
    web = served["web"]
    first, last = web.ports.first, web.ports.last
    assert "    stats socket /run/immune-test/haproxy.sock mode 600 level admin\n" in text
    assert re.search(
        rf"^frontend web\n    bind {web.listen}\n    default_backend web\n", text, re.M
    )
    assert re.search(
        rf"^backend web\n    balance roundrobin\n(    #.*\n)?"
        rf"    server-template v {first}-{last} 127\.0\.0\.1:1 disabled weight 0\n",
        text,
        re.M,
    )
    assert "frontend prometheus\n    bind 127.0.0.1:18405\n" in text
    assert "http-request use-service prometheus-exporter if { path /metrics }" in text
    for line in ("retries 3", "option redispatch", "retry-on conn-failure empty-response"):
        assert f"\n    {line}\n" in text
    assert "plain" not in text


def test_tcp_runtime_api_and_two_pipelines_in_one_haproxy(
    haproxy_server: HAProxyServer, tmp_path: Path
) -> None:
    api = f"127.0.0.1:{free_port()}"
    both = config(
        web=pipeline("web", traffic(api, "web")),
        api=pipeline("api", traffic(api, "api", listen=f"[::1]:{free_port()}")),
    )
    text = render(traffic_group(both))
    check(haproxy_server, text, tmp_path)
    assert f"    stats socket ipv4@{api} level admin\n" in text
    assert text.count("\nfrontend ") == 3 and text.count("\nbackend ") == 2
    assert "frontend prometheus\n    bind 127.0.0.1:8405\n" in text  # the default exporter
    assert render(traffic_group(both, "api")) == text


def test_the_slots_are_named_after_their_ports(haproxy_server: HAProxyServer) -> None:
    block = haproxy_server.traffic_block("web", ports=5)
    (web,) = haproxy_server.serve({"web": block}).values()
    answer = RuntimeApi(web.runtime_api).ask("show servers state web")
    names = [row.split()[3] for row in answer.splitlines()[2:]]
    assert names == [f"v{port}" for port in web.ports.numbers()]


def test_which_pipelines_share_an_haproxy() -> None:
    mixed = config(
        a=pipeline("a", traffic("/tmp/immune-a.sock", "a")),
        b=pipeline("b", traffic("/tmp/immune-b.sock", "b")),
        c=pipeline("c", traffic("/tmp/immune-a.sock", "c")),
        plain=pipeline("plain", None),
    )
    with pytest.raises(ConfigError) as error:
        traffic_group(mixed)
    assert error.value.message == (
        "the pipelines behind a proxy name 2 runtime APIs, one HAProxy each "
        "(/tmp/immune-a.sock: a, c; /tmp/immune-b.sock: b): "
        "name a pipeline to print its HAProxy's config"
    )
    assert list(traffic_group(mixed, "c")) == ["a", "c"]
    assert list(traffic_group(mixed, "b")) == ["b"]
    with pytest.raises(ConfigError, match="pipeline 'plain' has no traffic: block"):
        traffic_group(mixed, "plain")
    with pytest.raises(UnknownPipeline, match="unknown pipeline 'nope'"):
        traffic_group(mixed, "nope")
    with pytest.raises(ConfigError, match="no pipeline has a traffic: block"):
        traffic_group(config(plain=pipeline("plain", None)))


def test_what_one_haproxy_cannot_serve() -> None:
    api = "/tmp/immune-x.sock"
    # Refused when the pipelines file is loaded, before any config is printed.
    with pytest.raises(ConfigError, match="both use backend 'web' of the HAProxy at"):
        config(a=pipeline("a", traffic(api, "web")), b=pipeline("b", traffic(api, "web")))
    with pytest.raises(ConfigError, match="exporter's frontend"):
        config(a=pipeline("a", traffic(api, "prometheus")))
    with pytest.raises(ConfigError, match="must be on loopback"):
        config(a=pipeline("a", traffic(f"10.1.2.3:{free_port()}", "web")))
    with pytest.raises(ConfigError, match="no spaces, quotes or #"):
        config(a=pipeline("a", traffic("/tmp/my api.sock", "web")))
    # What only the printed config knows: where its exporter listens.
    web = traffic_group(config(a=pipeline("a", traffic(api, "web"))))
    listen = web["a"].listen
    with pytest.raises(ConfigError, match="collides with pipeline 'a'"):
        render(web, exporter=listen)
    with pytest.raises(ConfigError, match="--exporter"):
        render(web, exporter="nowhere")


def test_cli_prints_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = {
        "pipelines": {
            "web": pipeline("web", traffic(str(tmp_path / "api.sock"), "web")),
            "plain": pipeline("plain", None),
        }
    }
    path = tmp_path / "pipelines.yml"
    path.write_text(yaml.safe_dump(raw))
    expected = render(traffic_group(parse_pipelines(raw)), exporter="127.0.0.1:19405")
    # As a user runs it: the pipelines file from PIPELINES_FILE, the config on stdout.
    result = subprocess.run(
        [sys.executable, "-m", "bot", "proxy-config", "--exporter", "127.0.0.1:19405"],
        env={"PATH": "/usr/bin:/bin", "PIPELINES_FILE": str(path)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected and result.stderr == ""

    with_file = ["--pipelines-file", str(path)]
    assert main(["proxy-config", "web", "--exporter", "127.0.0.1:19405", *with_file]) == 0
    assert capsys.readouterr().out == expected

    assert main(["proxy-config", "plain", *with_file]) == 2
    assert capsys.readouterr().err == (
        "immune: proxy-config: pipeline 'plain' has no traffic: block (behind a proxy: web)\n"
    )


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "plain.yml"
    plain.write_text(yaml.safe_dump({"pipelines": {"plain": pipeline("plain", None)}}))
    assert main(["proxy-config", "--pipelines-file", str(plain)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("immune: proxy-config: no pipeline has a traffic: block")

    mixed = tmp_path / "mixed.yml"
    mixed.write_text(
        yaml.safe_dump(
            {
                "pipelines": {
                    "a": pipeline("a", traffic("/tmp/immune-a.sock", "a")),
                    "b": pipeline("b", traffic("/tmp/immune-b.sock", "b")),
                }
            }
        )
    )
    assert main(["proxy-config", "--pipelines-file", str(mixed)]) == 2
    err = capsys.readouterr().err
    assert "2 runtime APIs" in err and "/tmp/immune-a.sock: a; /tmp/immune-b.sock: b" in err

    assert main(["proxy-config", "--pipelines-file", str(tmp_path / "missing.yml")]) == 2
    assert "file not found" in capsys.readouterr().err
