"""Approval rules: which decisions count, and where a request stands."""

from __future__ import annotations

from enum import StrEnum

from bot.domain.config import Approvals
from bot.domain.models import Approval, Rollout, RolloutStatus

APPROVED = "approved"
REJECTED = "rejected"


class RequestState(StrEnum):
    """Where an approval request stands (what its message shows)."""

    pending = "pending"
    approved = "approved"
    rejected = "rejected"
    expired = "expired"
    cancelled = "cancelled"


def approvals_given(rollout: Rollout, policy: Approvals) -> list[Approval]:
    """Approvals that count: one per listed approver, never the requester's."""
    counted: list[Approval] = []
    seen: set[str] = set()
    for approval in rollout.approvals:
        if (
            approval.decision == APPROVED
            and approval.user in policy.approvers
            and approval.user != rollout.requested_by
            and approval.user not in seen
        ):
            seen.add(approval.user)
            counted.append(approval)
    return counted


def request_state(rollout: Rollout, policy: Approvals) -> RequestState:
    if rollout.status is RolloutStatus.awaiting_approval:
        return RequestState.pending
    if rollout.status is RolloutStatus.rejected:
        return RequestState.rejected
    if rollout.status is RolloutStatus.expired:
        return RequestState.expired
    if len(approvals_given(rollout, policy)) >= policy.required:
        return RequestState.approved  # whatever the rollout did next, it was approved
    return RequestState.cancelled
