"""The bot's dependencies, built once and handed to domain functions."""

from __future__ import annotations

from dataclasses import dataclass

from bot.domain.clock import Clock
from bot.domain.config import Pipeline, PipelinesConfig
from bot.domain.errors import UnknownPipeline
from bot.ports import Notifier, Target
from bot.services.runner import RolloutRunner
from bot.store.store import Store


@dataclass(frozen=True)
class Limits:
    """The settings the use cases need (the composition root maps them from Settings)."""

    lock_ttl_seconds: float = 15.0
    audit_max_age_days: float = 90.0


@dataclass
class Context:
    limits: Limits
    config: PipelinesConfig
    store: Store
    runner: RolloutRunner
    notifier: Notifier
    clock: Clock
    instance_id: str

    def pipeline(self, name: str) -> Pipeline:
        try:
            return self.config.pipelines[name]
        except KeyError:
            known = ", ".join(f"`{n}`" for n in sorted(self.config.pipelines))
            raise UnknownPipeline(
                f"There is no pipeline `{name}`.", hint=f"Pipelines: {known}."
            ) from None

    def target(self, pipeline: Pipeline) -> Target:
        return self.runner.target_for(pipeline)

    def audit(self, **fields: str) -> None:
        self.store.audit(max_age_days=self.limits.audit_max_age_days, **fields)
