"""`python -m bench [--quick] [--out FILE] [--only SECTIONS]`: measure the bot against its floor.

Sections: ack (ack latency), rollback (rollback and detection), polling (polling scale),
memory, traffic (deploys and rollbacks behind HAProxy), judge (recorded KPI traces replayed
through both judges; it needs no server, so `--only judge` starts none), and soak (two
replicas, one killed again and again, through many deploys and commands: run only when named,
`python -m bench soak`; about 20 minutes, 3 with --quick). Writes the results
as JSON (default bench/results/latest.json, with a Markdown table beside it as latest.md and
the run's log as latest.log) and prints the table. The full run takes about 6-10 minutes on
a 2-core machine; --quick is a 1-2 minute smoke version whose figures are rougher. Exits 1 if
a section failed (its error is in the JSON), 0 otherwise: targets are reported, not asserted.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from bench import ack, judge, machine, memory, polling, report, rollback, soak, traffic
from bench.machine import busy_cpu_seconds
from bench.rig import BenchRig

logger = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "latest.json"
SECTIONS = ("ack", "rollback", "polling", "memory", "traffic", "judge", "soak")
DEFAULT_SECTIONS = SECTIONS[:-1]  # the soak runs only when asked for: it takes its own time
RIGLESS = {"judge"}  # sections that need no server, image or container


def _clean(value: Any) -> Any:
    """JSON without NaN or infinity (they become null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def _loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _meta(quick: bool) -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "quick": quick,
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "commit": _commit(),
        "loadavg_start": _loadavg(),
        "wake_penalty": machine.wake_penalty(),
        "versions": {
            name: version(name) for name in ("slack_bolt", "slack_sdk", "waitress", "redis")
        },
    }


def _sections(quick: bool) -> dict[str, Callable[[BenchRig], dict[str, Any]]]:
    def run_ack(rig: BenchRig) -> dict[str, Any]:
        return {"ack": ack.run(rig, ack.QUICK if quick else ack.FULL)}

    def run_rollback(rig: BenchRig) -> dict[str, Any]:
        rolled, detected = rollback.run(rig, rollback.QUICK if quick else rollback.FULL)
        return {"rollback": rolled, "detection": detected}

    def run_polling(rig: BenchRig) -> dict[str, Any]:
        return {"polling": polling.run(rig, polling.QUICK if quick else polling.FULL)}

    def run_memory(rig: BenchRig) -> dict[str, Any]:
        return {"memory": memory.run(rig, memory.QUICK if quick else memory.FULL)}

    def run_traffic(rig: BenchRig) -> dict[str, Any]:
        return {"traffic": traffic.run(rig, traffic.QUICK if quick else traffic.FULL)}

    def run_judge(rig: BenchRig) -> dict[str, Any]:
        return {"judge": judge.run()}

    def run_soak(rig: BenchRig) -> dict[str, Any]:
        return {"soak": soak.run(rig, soak.QUICK if quick else soak.FULL)}

    return {
        "ack": run_ack,
        "rollback": run_rollback,
        "polling": run_polling,
        "memory": run_memory,
        "traffic": run_traffic,
        "judge": run_judge,
        "soak": run_soak,
    }


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: containers get removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 1-2 minute smoke version")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON file to write")
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT_SECTIONS),
        help=f"comma-separated, of {', '.join(SECTIONS)} (default: all but soak)",
    )
    parser.add_argument(
        "sections", nargs="*", metavar="SECTION", help="as --only: `python -m bench soak`"
    )
    args = parser.parse_args(argv)
    chosen = args.sections or [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}")
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=out.with_suffix(".log"),
        filemode="w",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s",
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)

    results: dict[str, Any] = {"meta": _meta(args.quick)}
    failed = False
    started = time.monotonic()
    rig = BenchRig()
    try:
        if set(chosen) - RIGLESS:
            print(
                "bench: starting Redis, Prometheus, the emulator; building demo images",
                file=sys.stderr,
            )
            rig.start()
        results["meta"]["rig"] = rig.timings
        runners = _sections(args.quick)
        for name in SECTIONS:
            if name not in chosen:
                continue
            print(f"bench: {name} (load average {_loadavg()})", file=sys.stderr, flush=True)
            began, busy_before = time.monotonic(), busy_cpu_seconds()
            load_before = _loadavg()
            try:
                produced = runners[name](rig)
            except Exception as exc:
                logger.exception("section %s failed", name)
                failed = True
                produced = {name: {"error": f"{type(exc).__name__}: {exc}"}}
                if name == "rollback":
                    produced["detection"] = {"error": "the rollback section failed"}
            elapsed = time.monotonic() - began
            busy = (busy_cpu_seconds() - busy_before) / elapsed
            for key, section in produced.items():
                section["section_seconds"] = elapsed
                section["loadavg_before"] = load_before
                section["machine_busy_cores"] = busy
                results[key] = section
            print(f"bench: {name} done in {elapsed:.0f} s", file=sys.stderr, flush=True)
    finally:
        rig.close()
    results["meta"]["seconds"] = time.monotonic() - started
    results["meta"]["loadavg_end"] = _loadavg()
    table = report.markdown(_clean(results))
    results["table_markdown"] = table
    partial = out.with_suffix(".json.partial")
    partial.write_text(json.dumps(_clean(results), indent=2, allow_nan=False) + "\n")
    partial.replace(out)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"\nbench: results in {out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
