"""What the whole machine was doing: busy CPU from /proc/stat, to read the figures by."""

from __future__ import annotations

import json
import math
import os
import socket
import statistics
import time

USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def busy_cpu_seconds() -> float:
    """CPU seconds all cores spent busy since boot (user, nice, system, irq, softirq, steal)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return math.nan
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / USER_HZ


def process_cpu_seconds(pid: int | None) -> float:
    """CPU seconds (user + system) of one process, from /proc/<pid>/stat."""
    if not pid:
        return math.nan
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / USER_HZ


WAKE_GAP_SECONDS = 0.05
"""The idle gap of `wake_penalty`: about what separates a quiet bot's requests, or more."""


def _fixed_work() -> None:
    """A small fixed piece of what an ack does: a JSON round trip and two socket binds (the
    bot's port check), no network."""
    json.loads(json.dumps({"pipeline": "web", "steps": [{"n": i, "ok": True} for i in range(20)]}))
    for _ in range(2):
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.bind(("127.0.0.1", 0))
        finally:
            probe.close()


def wake_penalty(hot: int = 200, idle: int = 40) -> dict[str, float]:
    """The same fixed work, hot (back to back) and after WAKE_GAP_SECONDS asleep (medians, µs).

    On a VM whose vCPU halts while idle, code run after a wake-up is slow (cold caches): the
    more of it a request runs between waits, the more this machine adds to its latency. The
    figures make runs on different machines comparable; they say nothing of the bot."""

    def timed() -> float:
        started = time.perf_counter()
        _fixed_work()
        return (time.perf_counter() - started) * 1e6

    _fixed_work()
    back_to_back = statistics.median(timed() for _ in range(hot))
    after_idle = []
    for _ in range(idle):
        time.sleep(WAKE_GAP_SECONDS)
        after_idle.append(timed())
    return {
        "hot_us": back_to_back,
        "after_idle_us": statistics.median(after_idle),
        "gap_ms": WAKE_GAP_SECONDS * 1000,
    }
