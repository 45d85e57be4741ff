"""The HAProxy router on a real HAProxy: requests really move between two loopback versions."""

from __future__ import annotations

import re
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from bot.domain.config import Traffic
from bot.domain.traffic import server_name
from bot.ports import TrafficError
from bot.traffic.haproxy import HAProxyRouter, RuntimeApi
from tests.support.services import HAProxyServer, free_port


class Version:
    """A tiny HTTP service on 127.0.0.1:`port` that answers its own name (and `status`)."""

    def __init__(self, name: str, port: int, status: int = 200) -> None:
        self.name = name
        self.status = status
        version = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = version.name.encode()
                self.send_response(version.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def web(haproxy_server: HAProxyServer) -> Traffic:
    """HAProxy serving one pipeline, `web`, with 4 slots (all in maintenance at start)."""
    (traffic,) = haproxy_server.serve({"web": haproxy_server.traffic_block("web")}).values()
    return traffic


@pytest.fixture
def versions(web: Traffic) -> Iterator[Callable[..., Version]]:
    """Start a Version on the pipeline's n-th port: `versions("blue", 0)`."""
    started: list[Version] = []

    def start(name: str, index: int, status: int = 200) -> Version:
        version = Version(name, web.ports.first + index, status)
        started.append(version)
        return version

    yield start
    for version in started:
        version.close()


def send(traffic: Traffic, count: int) -> Counter[str]:
    """`count` requests through the pipeline's frontend: who answered, and with what."""
    answers: Counter[str] = Counter()
    with requests.Session() as session:
        session.trust_env = False
        for _ in range(count):
            response = session.get(f"http://{traffic.listen}/", timeout=5)
            answers[response.text if response.ok else f"HTTP {response.status_code}"] += 1
    return answers


def test_route_splits_requests_and_moves_them_back(
    web: Traffic, versions: Callable[..., Version]
) -> None:
    blue, green = web.ports.first, web.ports.first + 1
    versions("blue", 0)
    versions("green", 1)
    router = HAProxyRouter([web.runtime_api])
    assert router.routes(web) == {}  # every slot starts in maintenance

    router.route(web, {blue: 90, green: 10})
    assert router.routes(web) == {blue: 90, green: 10}
    answers = send(web, 200)
    assert sum(answers.values()) == 200 and set(answers) <= {"blue", "green"}
    assert abs(answers["green"] / 200 * 100 - 10) <= 5, answers

    router.route(web, {blue: 0, green: 100})
    assert router.routes(web) == {blue: 0, green: 100}
    assert send(web, 50) == {"green": 50}

    router.route(web, {blue: 100, green: 0})  # a rollback: one weight up, one down
    assert send(web, 50) == {"blue": 50}


def test_drain_then_maintenance(web: Traffic, versions: Callable[..., Version]) -> None:
    blue, green = web.ports.first, web.ports.first + 1
    versions("blue", 0)
    versions("green", 1)
    router = HAProxyRouter()
    router.route(web, {blue: 50, green: 50})
    router.drain(web, blue)
    assert router.routes(web) == {green: 50}
    slots = router.slots(web)
    assert slots[server_name(blue)].draining and not slots[server_name(blue)].in_maint
    assert send(web, 20) == {"green": 20}

    router.route(web, {green: 100})
    slots = router.slots(web)
    assert slots[server_name(blue)].in_maint
    assert router.routes(web) == {green: 100}
    router.drain(web, blue)  # a slot in maintenance stays there
    assert router.slots(web)[server_name(blue)].in_maint

    router.route(web, {blue: 100})  # back from maintenance, the old version takes it all
    assert router.routes(web) == {blue: 100}
    assert send(web, 10) == {"blue": 10}


def test_a_restarted_haproxy_forgets_the_routes(
    haproxy_server: HAProxyServer, web: Traffic, versions: Callable[..., Version]
) -> None:
    versions("blue", 0)
    router = HAProxyRouter()
    router.route(web, {web.ports.first: 100})
    assert router.routes(web) == {web.ports.first: 100}
    haproxy_server.restart()
    assert router.routes(web) == {}
    assert send(web, 1) == {"HTTP 503": 1}


def test_unreachable_haproxy_changes_nothing(
    haproxy_server: HAProxyServer, web: Traffic, versions: Callable[..., Version]
) -> None:
    blue, green = web.ports.first, web.ports.first + 1
    versions("blue", 0)
    router = HAProxyRouter(timeout=0.3)
    router.route(web, {blue: 100})

    missing = web.model_copy(update={"runtime_api": web.runtime_api + ".missing"})
    with pytest.raises(TrafficError, match=r"cannot be reached \(No such file or directory"):
        router.route(missing, {green: 100})
    refused = web.model_copy(update={"runtime_api": f"127.0.0.1:{free_port()}"})
    with pytest.raises(TrafficError, match=r"cannot be reached \(Connection refused"):
        router.route(refused, {green: 100})
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        port = silent.getsockname()[1]
        mute = web.model_copy(update={"runtime_api": f"127.0.0.1:{port}"})
        started = time.monotonic()
        with pytest.raises(TrafficError, match=r"did not answer within 0.3 s"):
            router.route(mute, {green: 100})
        assert time.monotonic() - started < 2
    with pytest.raises(TrafficError, match="only a unix socket or a loopback address"):
        router.route(web.model_copy(update={"runtime_api": "10.1.2.3:9999"}), {green: 100})
    assert router.routes(web) == {blue: 100}

    health = HAProxyRouter([web.runtime_api, missing.runtime_api]).health()
    assert health["ok"] is False
    up, down = sorted(health["proxies"], key=lambda proxy: not proxy["ok"])
    assert up["ok"] and up["pid"] == haproxy_server.pid and up["version"].startswith("2.")
    assert isinstance(up["uptime_seconds"], int)
    assert not down["ok"] and "cannot be reached" in down["error"]
    assert HAProxyRouter([web.runtime_api]).health()["ok"] is True


def test_refusals_name_the_command(
    haproxy_server: HAProxyServer, web: Traffic, versions: Callable[..., Version]
) -> None:
    blue = web.ports.first
    versions("blue", 0)
    router = HAProxyRouter()
    router.route(web, {blue: 100})
    nosuch = web.model_copy(update={"backend": "nosuch"})
    with pytest.raises(TrafficError) as error:
        router.route(nosuch, {blue: 100})
    assert error.value.reason == "HAProxy refused `show servers state nosuch`: Can't find backend."
    with pytest.raises(TrafficError, match=r"outside traffic\.ports"):
        router.route(web, {web.ports.last + 1: 100})
    with pytest.raises(TrafficError, match="no port would get any"):
        router.route(web, {blue: 0})
    with pytest.raises(TrafficError, match="weights must be 0-100"):
        router.route(web, {blue: 101})
    assert router.routes(web) == {blue: 100}

    # A static balancing algorithm takes no weights but 0% and 100%: HAProxy's own refusal.
    haproxy_server.config_path.write_text(
        haproxy_server.config_path.read_text().replace("balance roundrobin", "balance source")
    )
    haproxy_server.restart()
    with pytest.raises(TrafficError) as error:
        router.route(web, {blue: 90, blue + 1: 10})
    assert error.value.reason == (
        f"HAProxy refused `set server web/v{blue} weight 90`: Backend is using a static LB "
        "algorithm and only accepts weights '0%' and '100%'."
    )
    assert router.routes(web) == {}  # nothing was set ready after the refusal


def test_tcp_runtime_api(haproxy_server: HAProxyServer) -> None:
    block = haproxy_server.traffic_block("web", runtime_api=f"127.0.0.1:{free_port()}")
    (web,) = haproxy_server.serve({"web": block}).values()
    blue = web.ports.first
    version = Version("tcp-blue", blue)
    try:
        router = HAProxyRouter([web.runtime_api])
        router.route(web, {blue: 100})
        assert router.routes(web) == {blue: 100}
        assert send(web, 3) == {"tcp-blue": 3}
        assert router.health()["ok"] is True
    finally:
        version.close()


def test_the_exporter_counts_responses_per_slot(
    haproxy_server: HAProxyServer, web: Traffic, versions: Callable[..., Version]
) -> None:
    good, bad = web.ports.first, web.ports.first + 1
    versions("good", 0)
    versions("bad", 1, status=500)
    HAProxyRouter().route(web, {good: 50, bad: 50})
    answers = send(web, 40)
    assert answers == {"good": 20, "HTTP 500": 20}
    metrics = haproxy_server.metrics()

    def value(name: str, server: str, code: str | None = None) -> float:
        labels = f'proxy="web",server="{server}"' + (f',code="{code}"' if code else "")
        match = re.search(rf"^{name}\{{{re.escape(labels)}\}} (\S+)$", metrics, re.M)
        assert match, f"{name}{{{labels}}} not in the exporter's answer"
        return float(match.group(1))

    total = "haproxy_server_http_responses_total"
    assert value(total, server_name(good), "2xx") == 20
    assert value(total, server_name(good), "5xx") == 0
    assert value(total, server_name(bad), "5xx") == 20
    assert value("haproxy_server_loadbalanced_total", server_name(bad)) == 20
    assert value("haproxy_server_response_time_average_seconds", server_name(good)) >= 0
    assert value("haproxy_server_max_response_time_seconds", server_name(good)) >= 0
    for port in web.ports.numbers():  # every slot has its series, routed or not
        assert value(total, server_name(port), "2xx") >= 0


class RecordingApi(RuntimeApi):
    """The runtime API, keeping each line of commands it sent."""

    def __init__(self, where: str, lines: list[list[str]]) -> None:
        super().__init__(where)
        self.lines = lines

    def batch(self, commands: Sequence[str]) -> list[str]:
        self.lines.append(list(commands))
        return super().batch(commands)


class RecordingRouter(HAProxyRouter):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[list[str]] = []

    def api_for(self, traffic: Traffic) -> RuntimeApi:
        return RecordingApi(traffic.runtime_api, self.lines)


def test_a_rollback_is_one_fast_weight_change(
    web: Traffic, versions: Callable[..., Version]
) -> None:
    blue, green = web.ports.first, web.ports.first + 1
    versions("blue", 0)
    versions("green", 1)
    router = RecordingRouter()
    router.route(web, {blue: 100})
    assert router.lines == [
        ["show servers state web"],
        [
            f"set server web/v{blue} addr 127.0.0.1 port {blue}",
            f"set server web/v{blue} weight 100",
        ],
        [f"set server web/v{blue} state ready"],
    ]
    router.route(web, {blue: 0, green: 100})
    router.lines.clear()
    router.route(web, {blue: 100, green: 0})
    # One weight up, then one down, each answer checked before the next line is sent.
    assert router.lines == [
        ["show servers state web"],
        [f"set server web/v{blue} weight 100"],
        [f"set server web/v{green} weight 0"],
    ]
    assert send(web, 10) == {"blue": 10}

    timings = []
    for _ in range(20):
        router.route(web, {blue: 0, green: 100})
        started = time.perf_counter()
        router.route(web, {blue: 100, green: 0})
        timings.append(time.perf_counter() - started)
    assert statistics.median(timings) < 0.05, timings
    assert max(timings) < 0.5, timings


def test_shift_moves_requests_between_serving_slots_in_one_round_trip(
    web: Traffic, versions: Callable[..., Version]
) -> None:
    blue, green = web.ports.first, web.ports.first + 1
    versions("blue", 0)
    versions("green", 1)
    router = RecordingRouter()
    router.route(web, {blue: 0, green: 100})
    router.lines.clear()
    assert router.shift(web, {blue: 100, green: 0})
    # No read first: the weights, highest first, then the state that proves them, one line.
    assert router.lines == [
        [
            f"set server web/v{blue} weight 100",
            f"set server web/v{green} weight 0",
            "show servers state web",
        ]
    ]
    assert router.routes(web) == {blue: 100, green: 0}
    assert send(web, 10) == {"blue": 10}


def test_shift_after_a_restart_moves_nothing_and_says_so(
    haproxy_server: HAProxyServer, web: Traffic, versions: Callable[..., Version]
) -> None:
    blue, green = web.ports.first, web.ports.first + 1
    versions("blue", 0)
    versions("green", 1)
    router = HAProxyRouter()
    router.route(web, {blue: 0, green: 100})
    haproxy_server.restart()
    assert not router.shift(web, {blue: 100, green: 0}), "the slots no longer serve their ports"
    assert router.routes(web) == {}, "a weight alone puts no slot back in service"
    router.route(web, {blue: 100, green: 0})  # what the caller does next
    assert send(web, 10) == {"blue": 10}


def test_shift_refuses_what_it_cannot_prove(web: Traffic, versions: Callable[..., Version]) -> None:
    blue, green, third = web.ports.first, web.ports.first + 1, web.ports.first + 2
    versions("blue", 0)
    versions("green", 1)
    versions("third", 2)
    router = HAProxyRouter()
    router.route(web, {blue: 0, green: 50, third: 50})
    assert not router.shift(web, {blue: 100, green: 0}), "a third slot still serves"
    router.route(web, {blue: 0, green: 100})
    outside = web.ports.last + 1
    with pytest.raises(TrafficError, match=r"outside traffic\.ports"):
        router.shift(web, {outside: 100, green: 0})
    assert router.routes(web) == {blue: 0, green: 100}
