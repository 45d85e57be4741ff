"""`python -m bench --quick` runs every section and writes numeric figures (not timings checked)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest
from docker import DockerClient

from tests.support.services import REPO_ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.docker,
    pytest.mark.prometheus,
    pytest.mark.timeout(600),
]

SECTIONS = ("ack", "rollback", "detection", "polling", "memory")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _needs(program: str) -> None:
    if shutil.which(program) is None:
        reason = f"{program} not found on PATH (run scripts/setup.sh)"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{reason} [CI is set: every test must run]", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def results(
    tmp_path_factory: pytest.TempPathFactory, docker_client: DockerClient
) -> dict[str, Any]:
    _needs("redis-server")
    _needs("prometheus")
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert run.returncode == 0, (
        f"bench failed ({run.returncode}):\n{run.stdout}\n{run.stderr[-4000:]}"
    )
    data: dict[str, Any] = json.loads(out.read_text())
    data["_stdout"] = run.stdout
    return data


def test_every_section_is_there_without_errors(results: dict[str, Any]) -> None:
    for section in SECTIONS:
        assert section in results, section
        assert "error" not in results[section], results[section].get("error")
    assert results["meta"]["quick"] is True


def test_ack_has_every_request_kind_at_every_concurrency(results: dict[str, Any]) -> None:
    ack = results["ack"]
    for mode in ("default", "process_before_response"):
        for figures in ack["bare"][mode].values():
            assert figures["n"] > 0 and figures["errors"] == 0
            assert all(_number(figures[k]) for k in ("p50", "p99", "max", "throughput"))
    endpoints = {row["endpoint"] for row in ack["rows"]}
    assert any(e.startswith("/deploy refused: already live") for e in endpoints)
    assert any(e.startswith("/deploy refused: rollout in flight") for e in endpoints)
    assert any(e.startswith("/deploy accepted") for e in endpoints)
    assert any(e.startswith("/pipeline") for e in endpoints)
    for row in ack["rows"]:
        assert row["n"] > 0 and row["errors"] == 0, row
        assert all(_number(row[k]) for k in ("p50", "p99", "max", "floor_p99", "ratio_p99")), row
    assert {row["concurrency"] for row in ack["rows"]} == {1, 10, 50}


def test_rollback_and_detection_have_ratios_against_their_floors(results: dict[str, Any]) -> None:
    rollback = results["rollback"]
    assert _number(rollback["floor"]["docker_start"]["p50"])
    paths = {row["path"]: row for row in rollback["rows"]}
    assert set(paths) == {"/rollback command", "confirmed breach (real Prometheus)"}
    for row in paths.values():
        assert row["n"] >= 1 and _number(row["p50"]) and _number(row["ratio_p50"]), row
    assert _number(rollback["slow_slack"]["p50"])
    detection = results["detection"]
    assert detection["n"] >= 1
    assert all(_number(detection[k]) for k in ("p50", "max", "floor_seconds", "ratio_p50"))


def test_traffic_times_the_rollback_against_its_floor_and_the_same_work(
    results: dict[str, Any],
) -> None:
    traffic = results["traffic"]
    assert "error" not in traffic, traffic.get("error")
    timing = traffic["rollback_time"]
    for reference in ("floor", "router", "same_work"):
        assert timing[reference]["n"] >= 1 and _number(timing[reference]["p50"]), reference
    # The same work replays what the bot's /rollback ack sent before the move: its claim and
    # the rollout's opening.
    assert timing["same_work"]["commands"] == 2
    assert _number(timing["same_work"]["command_ratio_p50"])
    for row in timing["rows"]:
        assert row["n"] >= 1 and _number(row["p50"]) and _number(row["ratio_p50"]), row
    assert "same work without the bot" in results["table_markdown"]


def test_polling_covers_three_scales_with_cpu_round_trips_and_lateness(
    results: dict[str, Any],
) -> None:
    scales = results["polling"]["scales"]
    assert [s["kpis"] for s in scales] == [10, 100, 1000]
    for scale in scales:
        assert scale["polls"] > 0
        for key in (
            "process_cpu_seconds",
            "process_cpu_per_poll",
            "redis_round_trips_per_poll",
            "lateness_p99",
        ):
            assert _number(scale[key]), (scale["kpis"], key)
    assert len(results["polling"]["growth"]) == 2


def test_memory_reports_rss_at_rest_and_after_commands(results: dict[str, Any]) -> None:
    memory = results["memory"]
    assert memory["commands"] > 0 and memory["errors"] == 0
    for key in ("rss_rest_mb", "rss_after_all_mb", "growth_second_half_mb"):
        assert _number(memory[key]) and memory["rss_rest_mb"] > 0, key


def test_the_table_is_printed_and_names_every_section(results: dict[str, Any]) -> None:
    for heading in ("Ack latency", "Rollback", "Detection", "Polling scale", "Memory"):
        assert heading in results["_stdout"]
        assert heading in results["table_markdown"]
