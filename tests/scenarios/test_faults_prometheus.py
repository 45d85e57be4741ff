"""Prometheus misbehaves: each bad answer has a defined verdict, logged once per watch.

The real Prometheus answers NaN (`0/0`), ±Inf (`±1/0`), several series, a string and a 400
for a query it cannot parse. What it cannot be made to answer (a 5xx, a body that is not its
JSON, a query slower than the poll interval) comes from a loopback server that speaks
`/api/v1/query` like it. `python -m bot check` runs every query once and names the wrong ones.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from bot.domain.models import RolloutStatus
from tests.scenarios.test_deploy_loop import deploy, finished
from tests.scenarios.test_watch import watched_rollout_ended
from tests.support.bot_harness import REPO_ROOT, docker_pipeline, free_port, write_pipelines

pytestmark = [pytest.mark.docker, pytest.mark.prometheus]

TWO_SERIES = (
    'label_replace(vector(1), "a", "x", "", "") or label_replace(vector(2), "a", "y", "", "")'
)
SLOW_SECONDS = 3.0


def kpi(name: str, query: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "query": query, "max": 1, "no_data": "ignore", **fields}


def watch_log(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "bot.services.watch"]


def once_lines(records: list[logging.LogRecord], kpi_name: str) -> list[logging.LogRecord]:
    return [r for r in records if f", KPI {kpi_name}: " in r.getMessage()]


def test_real_prometheus_nan_inf_series_string_and_a_bad_query(
    start_bot: Any,
    web_pipeline: Any,
    prometheus_server: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bot.services.watch")
    kpis = [
        kpi("nan", "0/0"),
        kpi("plus_inf", "1/0"),
        kpi("minus_inf", "-1/0"),
        kpi("series", TWO_SERIES),
        kpi("string", '"hello"'),
        kpi("bad_query", "sum(rate(http_requests_total[1m])"),
        kpi("fine", "vector(0.5)"),
    ]
    web = web_pipeline(watch={"interval": "1s", "duration": "5s", "warmup": 1}, kpis=kpis)
    bot = start_bot({"pipelines": {"web": web}}, prometheus_url=prometheus_server.url)
    deploy(bot, "web 1")
    live = finished(bot, "web", "1")
    assert live.status is RolloutStatus.live
    ended = watched_rollout_ended(bot, "1")
    # Every reading was no data under `no_data: ignore`: the watch ends good.
    assert ended.status is RolloutStatus.good
    samples = [s for s in bot.immune.watcher.samples(live.id) if s.verdict != "warmup"]
    by_kpi: dict[str, list[Any]] = {}
    for sample in samples:
        by_kpi.setdefault(sample.kpi, []).append(sample)
    polls = len(by_kpi["fine"])
    assert polls >= 3, samples
    assert {s.verdict for s in by_kpi["fine"]} == {"ok"}
    expected = {
        "nan": "value is NaN (0/0: a ratio over no traffic?)",
        "plus_inf": "value is +Inf (a division by zero?)",
        "minus_inf": "value is -Inf (a division by zero?)",
        "series": "the query returns 2 series; aggregate it to one",
        "string": "unsupported result type 'string'; use a scalar or one series",
        "bad_query": "Prometheus rejected the query (bad_data, HTTP 400): ",
    }
    records = watch_log(caplog)
    for name, detail in expected.items():
        assert len(by_kpi[name]) == polls, (name, by_kpi[name])
        assert {s.verdict for s in by_kpi[name]} == {"ignored"}, (name, by_kpi[name])
        assert all(s.value is None and detail in s.detail for s in by_kpi[name]), by_kpi[name]
        logged = once_lines(records, name)
        assert len(logged) == 1, (name, [r.getMessage() for r in logged])
        assert detail in logged[0].getMessage()
        assert "logged once per watch" in logged[0].getMessage()
        config_error = name in ("series", "string", "bad_query")
        assert logged[0].levelno == (logging.ERROR if config_error else logging.WARNING), name
        assert ("the query is wrong" in logged[0].getMessage()) is config_error
    assert once_lines(records, "fine") == []


def test_nan_counts_as_a_breach_under_the_default_no_data_policy(
    start_bot: Any, web_pipeline: Any, prometheus_server: Any
) -> None:
    web = web_pipeline(
        watch={"interval": "1s", "duration": "6s", "warmup": 1},
        kpis=[{"name": "nan", "query": "0/0", "max": 1, "for": 2}],
    )
    bot = start_bot({"pipelines": {"web": web}}, prometheus_url=prometheus_server.url)
    bot.ctx.store.update_pipeline("web", last_good_version="0")
    deploy(bot, "web 1")
    live = finished(bot, "web", "1")
    ended = watched_rollout_ended(bot, "1")
    assert ended.status is RolloutStatus.rolled_back
    judged = [s for s in bot.immune.watcher.samples(live.id) if s.verdict != "warmup"]
    assert [s.verdict for s in judged] == ["no_data", "no_data"], judged


class FakePrometheus:
    """`/api/v1/query` answering by query text, counting requests and the most at once."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.timeouts: list[str] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                params = parse_qs(url.query)
                query = params.get("query", [""])[0]
                with fake._lock:
                    fake.requests[query] += 1
                    fake.timeouts.extend(params.get("timeout", []))
                status, body, kind = fake.answer(query)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the bot gave up waiting

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, query: str) -> tuple[int, bytes, str]:
        ok = {"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {}, "value": [time.time(), "0.5"]}
        ]}}  # fmt: skip
        if query == "fault_503":
            error = {"status": "error", "errorType": "unavailable", "error": "storage not ready"}
            return 503, json.dumps(error).encode(), "application/json"
        if query == "fault_502":
            return 502, b"<html>Bad Gateway</html>", "text/html"
        if query == "fault_not_prometheus":
            return 200, b"[1, 2, 3]", "application/json"
        if query == "fault_slow":
            time.sleep(SLOW_SECONDS)
        return 200, json.dumps(ok).encode(), "application/json"

    def __enter__(self) -> FakePrometheus:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_prometheus() -> Iterator[FakePrometheus]:
    with FakePrometheus() as fake:
        yield fake


def lateness_count(bot: Any) -> float:
    text = requests.get(bot.url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith('immune_poll_lateness_seconds_count{pipeline="web"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_5xx_garbage_and_a_query_slower_than_the_interval(
    start_bot: Any,
    web_pipeline: Any,
    fake_prometheus: FakePrometheus,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    kpis = [
        kpi("unavailable", "fault_503"),
        kpi("gateway", "fault_502"),
        kpi("not_prometheus", "fault_not_prometheus"),
        kpi("slow", "fault_slow"),  # eats this poll's whole budget (0.8 of the 1 s interval)
        kpi("after_slow", "fault_after_slow"),  # left no time: no data, never a late poll
    ]
    web = web_pipeline(watch={"interval": "1s", "duration": "5s", "warmup": 1}, kpis=kpis)
    bot = start_bot({"pipelines": {"web": web}}, prometheus_url=fake_prometheus.url)
    lateness_before = lateness_count(bot)
    deploy(bot, "web 1")
    live = finished(bot, "web", "1")
    ended = watched_rollout_ended(bot, "1")
    assert ended.status is RolloutStatus.good
    samples = bot.immune.watcher.samples(live.id)
    slots = [s.slot for s in samples if s.kpi == "slow"]
    assert slots == sorted(set(slots)), "each slot polled once, in order"
    judged = [s for s in samples if s.verdict != "warmup"]
    by_kpi: dict[str, list[Any]] = {}
    for sample in judged:
        by_kpi.setdefault(sample.kpi, []).append(sample)
    expected = {
        "unavailable": "Prometheus error (unavailable, HTTP 503): storage not ready",
        "gateway": "Prometheus answered HTTP 502 without JSON",
        "not_prometheus": "Prometheus answered HTTP 200 with unexpected JSON",
        "slow": "Prometheus timed out after",
        "after_slow": "no time left in this poll (its queries may take 0.8s in all)",
    }
    records = [r for r in caplog.records if r.name == "bot.services.watch"]
    for name, detail in expected.items():
        assert by_kpi[name], name
        assert {s.verdict for s in by_kpi[name]} == {"ignored"}, (name, by_kpi[name])
        assert all(detail in s.detail for s in by_kpi[name]), (name, by_kpi[name])
        logged = once_lines(records, name)
        assert len(logged) == 1, (name, [r.getMessage() for r in logged])
        assert logged[0].levelno == logging.WARNING
    # No pile-up: Prometheus was asked once per poll, the bounded wait was passed on to it,
    # and the scheduler never had to skip a poll still running.
    assert fake_prometheus.requests["fault_slow"] == len(slots)
    assert fake_prometheus.requests["fault_after_slow"] == 0
    assert not [
        r for r in caplog.records if "maximum number of running instances" in r.getMessage()
    ]
    assert all(int(t.removesuffix("ms")) <= 800 for t in fake_prometheus.timeouts)
    # Lateness is recorded for every poll.
    assert lateness_count(bot) - lateness_before == len(slots)


def run_check(pipelines: Path, prometheus_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "REDIS_", "PROM"))}
    env.update({"PROMETHEUS_URL": prometheus_url, "PIPELINES_FILE": str(pipelines)})
    return subprocess.run(
        [sys.executable, "-m", "bot", "check"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def check_pipeline(kpis: list[dict[str, Any]]) -> dict[str, Any]:
    return docker_pipeline(
        image="immune-test-check/web", container_name="immune-t-check", port=free_port(), kpis=kpis
    )


def kpi_of(line: str) -> str:
    """`pipeline/kpi` of a line of `python -m bot check` (state, name, query, result)."""
    match = re.search(r"  (\S+/\S+)  ", line)
    assert match, line
    return match.group(1)


def test_check_names_every_query_that_is_wrong(tmp_path: Path, prometheus_server: Any) -> None:
    path = tmp_path / "pipelines.yml"
    kpis = [
        kpi("fine", "vector(0.5)"),
        kpi("empty", 'sum(rate(immune_never_seen_total{job="x"}[1m]))'),
        kpi("bad_query", "sum(rate(http_requests_total[1m])"),
        kpi("series", TWO_SERIES),
        kpi("string", '"hello"'),
    ]
    write_pipelines(path, {"pipelines": {"web": check_pipeline(kpis)}})
    result = run_check(path, prometheus_server.url)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = {kpi_of(line): line for line in result.stdout.splitlines()}
    assert set(lines) == {"web/fine", "web/empty", "web/bad_query", "web/series", "web/string"}
    assert lines["web/fine"].startswith("ok ") and lines["web/fine"].endswith("-> 0.5")
    assert lines["web/empty"].startswith("no data ")
    assert lines["web/bad_query"].startswith("wrong ")
    assert "Prometheus rejected the query (bad_data, HTTP 400)" in lines["web/bad_query"]
    assert lines["web/series"].startswith("wrong ") and "returns 2 series" in lines["web/series"]
    assert lines["web/string"].startswith("wrong ") and "'string'" in lines["web/string"]
    assert "immune: check: 3 KPI query(ies) are wrong" in result.stderr

    write_pipelines(path, {"pipelines": {"web": check_pipeline(kpis[:2])}})
    result = run_check(path, prometheus_server.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""


def test_check_says_when_prometheus_does_not_answer(tmp_path: Path) -> None:
    path = tmp_path / "pipelines.yml"
    write_pipelines(path, {"pipelines": {"web": check_pipeline([kpi("fine", "vector(1)")])}})
    result = run_check(path, f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert result.stdout.startswith("not checked  web/fine  vector(1)  -> Prometheus unreachable")
    assert "immune: check: 1 KPI query(ies) not checked" in result.stderr
