"""What the whole machine was doing: busy CPU from /proc/stat, to read the figures by."""

from __future__ import annotations

import math
import os

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
