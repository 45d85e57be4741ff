"""The test support's port draws: what a config's traffic blocks are given must not collide.

A bench run once failed at config load with two pipelines given the same `traffic.ports`:
each block's range was free when drawn, but nothing bound it before the next block was drawn.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.services import HAProxyServer, free_port_range


def _ports(block: dict[str, object]) -> set[int]:
    first, last = (int(p) for p in str(block["ports"]).split("-"))
    listen = int(str(block["listen"]).rsplit(":", 1)[1])
    return {*range(first, last + 1), listen}


def test_the_traffic_blocks_of_one_haproxy_never_share_a_port(tmp_path: Path) -> None:
    # 40 blocks of 24 ports in 12,000: drawn independently, two would overlap in nearly every
    # run (each pair about 0.4%, 780 pairs).
    haproxy = HAProxyServer(tmp_path)
    given: set[int] = set()
    for index in range(40):
        ports = _ports(haproxy.traffic_block(f"b{index}", ports=24))
        assert not ports & given, f"block {index} was given ports already handed out"
        given |= ports


def test_a_range_avoids_the_ports_it_is_told_to() -> None:
    # Starts drawn from 20000-20031; those below 20020 would give a port in `avoid`.
    avoid = set(range(20000, 20020))
    for _ in range(20):
        first = free_port_range(8, low=20000, high=20040, avoid=avoid)
        assert set(range(first, first + 8)).isdisjoint(avoid)
