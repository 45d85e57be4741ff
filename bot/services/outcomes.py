"""How a rollout ended, recorded once: the `immune_rollouts_total` metric and the audit entry.

Recorded before the rollout's new status is written, so whoever sees the status (a person, a
test, another replica) also finds the audit entry that explains it.
"""

from __future__ import annotations

from bot import metrics
from bot.domain.models import Rollout
from bot.store.store import Store


def record_outcome(
    store: Store,
    rollout: Rollout,
    outcome: str,
    *,
    action: str | None = None,
    detail: str = "",
    actor: str = "immune",
    audit_outcome: str | None = None,
    audit: bool = True,
) -> None:
    """Count the outcome and audit it (`<kind>.<outcome>` unless `action` says otherwise).

    `audit_outcome` when the entry says more than the metric (a deploy `live` is `good` at once
    when nothing watches it); `audit=False` for callers that write their own, richer entry (an
    approver's rejection).
    """
    metrics.ROLLOUTS.labels(
        pipeline=rollout.pipeline, kind=rollout.kind.value, outcome=outcome
    ).inc()
    if not audit:
        return
    store.audit(
        actor=actor,
        action=action or f"{rollout.kind.value}.{outcome}",
        pipeline=rollout.pipeline,
        outcome=audit_outcome or outcome,
        rollout=rollout.id,
        detail=detail,
    )
