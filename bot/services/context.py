"""What every use case is handed: the config, the store, the ports, the clock, the runner."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from bot.domain.clock import Clock
from bot.domain.config import Pipeline, PipelinesConfig
from bot.domain.errors import UnknownPipeline
from bot.domain.models import Rollout
from bot.domain.text import say
from bot.ports import Notifier, Target
from bot.services.engine_status import EngineStatus
from bot.services.engine_view import EngineView
from bot.store.store import Store


@dataclass(frozen=True)
class Limits:
    """The settings the use cases need (the composition root maps them from Settings)."""

    lock_ttl_seconds: float = 15.0
    audit_max_age_days: float = 90.0


class Runner(Protocol):
    """Runs accepted rollouts off the request path (services/runner.py: RolloutRunner)."""

    def submit(self, rollout_id: str) -> Future[None]: ...

    def submit_recovery(self, rollout_id: str) -> Future[None]: ...

    def change(
        self,
        rollout_id: str,
        change: Callable[[Rollout], None],
        *,
        wait: bool = True,
        show: bool = True,
    ) -> Rollout:
        """Update the rollout in Redis, then its message (with show=False: not yet, see
        `show`)."""
        ...

    def show(self, rollout_id: str) -> None:
        """Update the rollout's message soon, off the caller's thread, from Redis."""
        ...

    def target_for(self, pipeline: Pipeline) -> Target: ...


@dataclass
class Context:
    limits: Limits
    config: PipelinesConfig
    store: Store
    runner: Runner
    notifier: Notifier
    clock: Clock
    instance_id: str
    # What the engine runs, read in the background for /pipeline <name> (services/status.py).
    engine_view: EngineView = field(default_factory=EngineView)
    # Which engines this replica finds unreachable (services/engines.py pings them).
    engines: EngineStatus = field(default_factory=EngineStatus)

    def pipeline(self, name: str) -> Pipeline:
        try:
            return self.config.pipelines[name]
        except KeyError:
            known = ", ".join(f"`{n}`" for n in sorted(self.config.pipelines))
            raise UnknownPipeline(
                say("There is no pipeline `{}`.", name), hint=say("Pipelines: {}.", known)
            ) from None

    def target(self, pipeline: Pipeline) -> Target:
        return self.runner.target_for(pipeline)

    def audit(self, **fields: str) -> None:
        self.store.audit(max_age_days=self.limits.audit_max_age_days, **fields)
