"""Approval requests for protected pipelines (DESIGN.md: `approvals`, deploy_approve/reject)."""

from __future__ import annotations

from bot.commands import Reply
from bot.config import Pipeline
from bot.context import Context
from bot.models import Rollout


def request_approval(ctx: Context, rollout: Rollout, pipeline: Pipeline) -> None:
    """Post the approval request in the pipeline's channel."""
    raise NotImplementedError("approvals arrive with issue 5")


def cancel(ctx: Context, rollout: Rollout, reason: str) -> None:
    """End a pending approval request (halt, expiry) and update its message."""
    raise NotImplementedError("approvals arrive with issue 5")


def decide(ctx: Context, rollout_id: str, user: str, decision: str, request_id: str) -> Reply:
    """An approver pressed deploy_approve or deploy_reject; exactly once per press."""
    raise NotImplementedError("approvals arrive with issue 5")
