"""Counting what a test's own thread sends to Redis: one item per round trip."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis


def count_round_trips(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What this thread sends to Redis from now on, one item per round trip (a pipeline's
    commands go out in one send); other threads (a rollout runner's) are not counted."""
    sent: list[Any] = []
    original: Callable[[Any, Any, bool], None] = (
        redis.connection.AbstractConnection.send_packed_command
    )
    mine = threading.get_ident()

    def send(self: Any, command: Any, check_health: bool = True) -> None:
        if threading.get_ident() == mine:
            sent.append(command)
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", send)
    return sent
