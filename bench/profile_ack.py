"""Where an ack's time goes: each bench request called in process, with cProfile.

    .venv/bin/python -m bench.profile_ack              # 2,000 of each request, top 20 functions
    .venv/bin/python -m bench.profile_ack --n 500 --top 30 --only "/pipeline <name>"
    .venv/bin/python -m bench.profile_ack --idle --n 200   # each request after idle gaps

The ack section measures latency over HTTP under load, where every request shares one GIL with
waitress and the load's other requests, so its figures move with whatever else the machine
does. This measures what one request costs the bot itself: the same signed requests (the
ack section's cases, on the same rig: real Redis, dockerd, the emulator) handed straight to
the bot's WSGI application on this thread, no HTTP server, and the thread's CPU per request.
The floors are bare slack-bolt apps called the same way: one trivial command, and the same
sending first the very Redis commands the bot's ack of that request sends (the work it cannot
skip). A cProfile pass over the bot's requests then names the functions the rest goes to,
and one over each request and its same-work floor sums where the time goes by area (a package,
a folder of the bot, the standard library's module, the socket calls), so the difference
says which code the bot's ack spends beyond the floor on.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

from bench.ack import BareBolt, Target, _round_trips, _start_bot, recorded_commands
from bench.load import LoadDriver, SignedForms
from bench.rig import BenchRig
from tests.support.bot_harness import SIGNING_SECRET

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
ROOT = Path(__file__).resolve().parent.parent
STDLIB = (
    Path(sys.base_prefix).resolve() / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
)


def _environ(body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/slack/events",
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": headers.get("Content-Type", "application/x-www-form-urlencoded"),
        "wsgi.input": io.BytesIO(body),
    }
    for name, value in headers.items():
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[f"HTTP_{key}"] = value
    setup_testing_defaults(environ)
    return environ


def call(app: WsgiApp, forms: SignedForms, command: str, text: str) -> str:
    """One signed slash command through the WSGI application; its ack's body."""
    body, headers = forms.build(command, text)
    status: list[str] = []

    def start_response(line: str, _headers: Any, _exc: Any = None) -> None:
        status.append(line)

    answer = b"".join(app(_environ(body, headers), start_response)).decode()
    if not status or not status[0].startswith("200"):
        raise RuntimeError(f"{command} {text!r}: HTTP {status} {answer[:200]}")
    return answer


def cpu_per_request(app: WsgiApp, forms: SignedForms, case: dict[str, str], n: int) -> float:
    """Thread CPU per request in ms; the answer is checked once, before timing."""
    answer = call(app, forms, case["command"], case["text"])
    if case["expect"] not in answer:
        raise RuntimeError(f"{case['command']} {case['text']!r} answered {answer[:300]!r}")
    started = time.thread_time()
    for _ in range(n):
        call(app, forms, case["command"], case["text"])
    return (time.thread_time() - started) / n * 1000


TRIVIAL = {"command": "/deploy", "text": "web 2", "expect": "ok"}
"""The bare apps' one command: what each floor is called with."""

IDLE_GAPS = (0.0, 0.005, 0.05)
"""Seconds the thread sleeps before each request of `--idle`: none, then gaps like those
between a quiet bot's requests."""


def cpu_after_idle(
    app: WsgiApp, forms: SignedForms, case: dict[str, str], n: int, idle: float
) -> float:
    """The median thread CPU (ms) of one request made after this thread slept `idle` s."""
    call(app, forms, case["command"], case["text"])
    samples = []
    for _ in range(n):
        if idle:
            time.sleep(idle)
        started = time.thread_time()
        call(app, forms, case["command"], case["text"])
        samples.append(time.thread_time() - started)
    return statistics.median(samples) * 1000


def print_idle(
    targets: list[Target], bot_app: WsgiApp, floors: dict[str, WsgiApp], forms: SignedForms, n: int
) -> None:
    """The same requests, each after an idle gap: what a request to a quiet bot costs. The
    CPU one request needs is not fixed: on a VM whose vCPU halts while idle, the first code
    run after a wake-up is slower (cold caches), and more so the longer the gap; a request
    that waits on Redis once or twice wakes up that many more times."""
    gaps = " | ".join(f"{g * 1000:g} ms" for g in IDLE_GAPS)
    print(f"\nThread CPU of one request after an idle gap, ms (median of {n}; gaps: {gaps})\n")
    print("| request | bot | same work | ratio |")
    print("|---|--:|--:|--:|")
    bare = [cpu_after_idle(floors[""], forms, TRIVIAL, n, g) for g in IDLE_GAPS]
    print(f"| bare bolt | {' / '.join(f'{c:.3f}' for c in bare)} | | |")
    for target in targets:
        case = target.cases[0]
        bot = [cpu_after_idle(bot_app, forms, case, n, g) for g in IDLE_GAPS]
        floor = [cpu_after_idle(floors[target.label], forms, TRIVIAL, n, g) for g in IDLE_GAPS]
        print(
            f"| {target.label} | {' / '.join(f'{c:.3f}' for c in bot)} | "
            f"{' / '.join(f'{c:.3f}' for c in floor)} | "
            f"{' / '.join(f'{b / f:.2f}x' for b, f in zip(bot, floor, strict=True))} |"
        )


def area_of(filename: str, function: str) -> str:
    """Where a profiled function lives: a package, a folder of this repository (`bot/` by its
    layer), a module of the standard library, or the C calls by kind."""
    if filename == "~":  # a C function: cProfile names it, with no file
        if "socket" in function or "select" in function:
            return "socket and select calls"
        return "pydantic" if "pydantic_core" in function else "other C built-ins"
    path = Path(filename).resolve()
    if "site-packages" in path.parts:
        return path.parts[path.parts.index("site-packages") + 1].removesuffix(".py")
    if path.is_relative_to(STDLIB):
        return "stdlib " + path.relative_to(STDLIB).parts[0].removesuffix(".py")
    if path.is_relative_to(ROOT):
        parts = path.relative_to(ROOT).parts
        return "/".join(parts[:2]) if parts[0] == "bot" and len(parts) > 2 else parts[0]
    return "other"


def profiled(app: WsgiApp, forms: SignedForms, case: dict[str, str], n: int) -> cProfile.Profile:
    """`n` of the case's requests through `app` under cProfile."""
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(n):
        call(app, forms, case["command"], case["text"])
    profile.disable()
    return profile


def time_by_area(profile: cProfile.Profile, n: int) -> Counter[str]:
    """Own time (cProfile's tottime) per request of a profile of `n` requests, in ms, summed
    by area."""
    areas: Counter[str] = Counter()
    stats: dict[Any, Any] = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    for (filename, _line, function), (_cc, _nc, tottime, _ct, _callers) in stats.items():
        areas[area_of(filename, function)] += tottime / n * 1000
    return areas


def print_areas(label: str, bot: Counter[str], floor: Counter[str]) -> None:
    """The areas side by side, the largest difference first (areas under 5 µs in both left out)."""
    print(f"\n## {label}: own time by area, ms per request under cProfile (bot, same work)\n")
    print("| area | bot | bare bolt + the same Redis commands | beyond it |")
    print("|---|--:|--:|--:|")
    shown = [a for a in bot.keys() | floor.keys() if max(bot[a], floor[a]) >= 0.005]
    for area in sorted(shown, key=lambda a: floor[a] - bot[a]):
        print(f"| {area} | {bot[area]:.3f} | {floor[area]:.3f} | {bot[area] - floor[area]:+.3f} |")
    total_bot, total_floor = sum(bot.values()), sum(floor.values())
    print(f"| all | {total_bot:.3f} | {total_floor:.3f} | {total_bot - total_floor:+.3f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="requests of each kind (≤ 20,000)")
    parser.add_argument("--top", type=int, default=20, help="functions shown per profile")
    parser.add_argument("--only", help="profile only this request (a label of the ack section)")
    parser.add_argument(
        "--sort", default="cumulative", choices=("cumulative", "tottime"), help="profile order"
    )
    parser.add_argument(
        "--idle",
        action="store_true",
        help="instead of the profiles: each request after idle gaps (IDLE_GAPS), n ≤ 300",
    )
    args = parser.parse_args()
    n = max(1, min(args.n, 20_000))  # bounded: every request is a real Redis round trip or more
    rig = BenchRig()
    bares: list[BareBolt] = []
    try:
        print("profile_ack: starting Redis, Prometheus, the emulator; building demo images")
        rig.start()
        assert rig.emulator is not None and rig.redis is not None
        under_test = _start_bot(rig)
        forms = SignedForms(
            {"secret": SIGNING_SECRET, "response_base": f"{rig.emulator.root_url}/response"}
        )
        driver = LoadDriver(SIGNING_SECRET, response_base=f"{rig.emulator.root_url}/response")
        targets: list[Target] = [
            t
            for t in under_test.targets
            if not t.pause_jobs and (args.only is None or t.label == args.only)
        ]
        try:
            trips = {t.label: round(_round_trips(driver, t)) for t in targets}
            commands = {t.label: recorded_commands(driver, t) for t in targets}
        finally:
            driver.close()
        bot_app: WsgiApp = under_test.bot.immune.wsgi()
        floors: dict[str, WsgiApp] = {}
        for label in ("", *commands):
            bare = BareBolt(rig.emulator.base_url, True, rig.redis.url, commands.get(label, ()))
            bares.append(bare)
            floors[label] = bare.wsgi()
        if args.idle:
            print_idle(targets, bot_app, floors, forms, min(n, 300))
            under_test.close()
            return 0
        print(f"\nThread CPU per request, ms ({n} each, in process, no HTTP server)\n")
        print(
            f"| {'request':<40} | Redis round trips | CPU ms | bare bolt + the same Redis "
            "commands | beyond it |"
        )
        print(f"|{'-' * 42}|--:|--:|--:|--:|")
        floor_cpu = {
            label: cpu_per_request(app, forms, TRIVIAL, n) for label, app in floors.items()
        }
        print(f"| {'bare bolt':<40} | 0 | {floor_cpu['']:.3f} | | |")
        for target in targets:
            case = target.cases[0]
            cpu = cpu_per_request(bot_app, forms, case, n)
            floor = floor_cpu[target.label]
            print(
                f"| {target.label:<40} | {trips[target.label]} | {cpu:.3f} | {floor:.3f} | "
                f"{cpu - floor:+.3f} |"
            )
        # One profile of the bot per request kind serves both its top functions and its areas.
        profiles = {t.label: profiled(bot_app, forms, t.cases[0], n) for t in targets}
        for target in targets:
            out = io.StringIO()
            stats = pstats.Stats(profiles[target.label], stream=out)
            stats.sort_stats(args.sort).print_stats(args.top)
            print(f"\n## {target.label}: top {args.top} by {args.sort} time over {n} requests\n")
            print(out.getvalue().split("\n", 6)[-1].rstrip())
        for target in targets:
            floor_profile = profiled(floors[target.label], forms, TRIVIAL, n)
            print_areas(
                target.label,
                time_by_area(profiles[target.label], n),
                time_by_area(floor_profile, n),
            )
        under_test.close()
    finally:
        for bare in bares:
            bare.close()
        rig.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
