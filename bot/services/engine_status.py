"""Which engines this replica last found unreachable, and since when (the engine job keeps it).

Read on the hot paths (/deploy's ack, every KPI poll), so it is memory, not Redis: each replica
pings its engines every second itself. Telling people once per outage goes through Redis
(services/engines.py).
"""

from __future__ import annotations

import threading


class EngineStatus:
    def __init__(self) -> None:
        self._down: dict[str, float] = {}  # engine (a target's name) -> first found down
        self._failing: set[str] = set()  # engines whose check itself fails (Redis away)
        self._lock = threading.Lock()

    def check_failed(self, engine: str) -> bool:
        """Record that checking `engine` failed; True the first time in a row (log it once)."""
        with self._lock:
            first = engine not in self._failing
            self._failing.add(engine)
            return first

    def check_worked(self, engine: str) -> None:
        with self._lock:
            self._failing.discard(engine)

    def down_since(self, engine: str) -> float | None:
        with self._lock:
            return self._down.get(engine)

    def found_down(self, engine: str, now: float) -> float:
        """Record an unreachable engine; returns when this replica first found it down."""
        with self._lock:
            return self._down.setdefault(engine, now)

    def found_up(self, engine: str) -> float | None:
        """Record an engine that answers; returns when it had been found down, if it was."""
        with self._lock:
            return self._down.pop(engine, None)
