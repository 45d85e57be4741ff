"""What the engine runs for each pipeline, as last read in the background.

`/pipeline <name>` shows what really runs beside what Redis says. Asking the engine inside
Slack's ack costs a blocking call and ~1.5 ms of CPU per request, so a job reads the live
version of each pipeline asked about lately every couple of seconds
(status.refresh_engine_view) and the ack reads this view instead. A reading is used only while
it is young and the pipeline's state is still the one it was read against (status.engine_of);
otherwise the engine is asked, as before.

Only pipelines asked about in the last `WANTED_SECONDS` are read: status is asked in bursts
(during a deploy, an incident), and reading every pipeline every 2 s on every replica would
cost the engine one listing per pipeline whether anybody looks or not.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from bot.domain.models import PipelineState
from bot.ports import LiveVersion

MAX_AGE_SECONDS = 10.0
"""An older reading is not used: the job that refreshes the view is late or stopped."""

WANTED_SECONDS = 600.0
"""How long after a `/pipeline <name>` the job keeps reading that pipeline."""


@dataclass(frozen=True)
class EngineReading:
    """One answer of `Target.live`, with when it was read and the state it was read against."""

    live: LiveVersion | None
    read_at: float
    live_version: str  # the pipeline's state, read just before the engine was asked
    live_rollout: str

    def describes(self, state: PipelineState) -> bool:
        """Still about `state`: no rollout in flight, and none went live since it was read."""
        return (
            not state.inflight_rollout
            and state.live_version == self.live_version
            and state.live_rollout == self.live_rollout
        )


class EngineView:
    """The latest reading of each pipeline, shared by the refreshing job and the acks."""

    def __init__(
        self, max_age: float = MAX_AGE_SECONDS, wanted_for: float = WANTED_SECONDS
    ) -> None:
        self.max_age = max_age
        self.wanted_for = wanted_for
        self._readings: dict[str, EngineReading] = {}
        self._asked_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def asked_about(self, name: str, now: float) -> None:
        """Somebody asked about the pipeline: keep its reading fresh for `wanted_for`."""
        with self._lock:
            self._asked_at[name] = now

    def wanted(self, now: float) -> list[str]:
        """The pipelines asked about within `wanted_for`, sorted; the others are forgotten,
        readings and all."""
        with self._lock:
            for name, asked_at in list(self._asked_at.items()):
                if not 0 <= now - asked_at <= self.wanted_for:
                    del self._asked_at[name]
                    self._readings.pop(name, None)
            return sorted(self._asked_at)

    def put(self, name: str, reading: EngineReading) -> None:
        with self._lock:
            self._readings[name] = reading

    def forget(self, name: str) -> bool:
        """Drop the pipeline's reading; True if there was one."""
        with self._lock:
            return self._readings.pop(name, None) is not None

    def get(self, name: str) -> EngineReading | None:
        with self._lock:
            return self._readings.get(name)

    def usable(self, name: str, state: PipelineState, now: float) -> EngineReading | None:
        """The reading, if it is at most `max_age` old and still about `state`."""
        reading = self.get(name)
        if reading is None or not 0 <= now - reading.read_at <= self.max_age:
            return None
        return reading if reading.describes(state) else None
