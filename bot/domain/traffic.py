"""Traffic behind a proxy: which proxy server slot serves which version, and the split.

Each port in `traffic.ports` has its own server slot in the proxy's backend (`v18100` for port
18100), so the slot a version holds follows from its port and needs no bookkeeping of its own.
"""

from __future__ import annotations

from bot.domain.config import Pipeline, Traffic
from bot.domain.models import Rollout

SERVER_PREFIX = "v"


def server_name(port: int) -> str:
    return f"{SERVER_PREFIX}{port}"


def port_of(server: str) -> int | None:
    """The port a slot stands for, or None for a server that is not one of ours."""
    digits = server.removeprefix(SERVER_PREFIX)
    return int(digits) if server.startswith(SERVER_PREFIX) and digits.isdigit() else None


def selector(traffic: Traffic, port: int) -> str:
    """PromQL label matchers for one version's series in the proxy's own metrics."""
    return f'proxy="{traffic.backend}",server="{server_name(port)}"'


def split(new_port: int, old_port: int | None, percent: int) -> dict[int, int]:
    """Weights (0-100) that send `percent` of requests to the new version, the rest to the old."""
    if old_port is None or percent >= 100:
        weights = {new_port: 100}
        if old_port is not None:
            weights[old_port] = 0
        return weights
    return {new_port: percent, old_port: 100 - percent}


def step_seconds(pipeline: Pipeline, rollout: Rollout) -> float:
    """How long the rollout's current step is watched: a canary step short of 100% its
    `step_duration`, the last step (a blue/green deploy's only one) `watch.duration`."""
    traffic, split = pipeline.traffic, rollout.traffic
    if traffic is None or split is None or split.baseline_port is None or split.percent >= 100:
        return pipeline.watch.duration
    return traffic.step_duration


def watch_seconds(pipeline: Pipeline, rollout: Rollout) -> float:
    """How long a deploy is watched: every canary step before 100%, then `watch.duration`.

    A first deploy has no baseline to share the traffic with: it takes it all at once.
    """
    traffic, split = pipeline.traffic, rollout.traffic
    if traffic is None or split is None or split.baseline_port is None:
        return pipeline.watch.duration
    return (len(traffic.plan) - 1) * traffic.step_duration + pipeline.watch.duration
