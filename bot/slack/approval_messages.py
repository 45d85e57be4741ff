"""Approval requests in Block Kit: pure functions from a rollout and its approval policy.

One message per request, posted in the pipeline's channel and updated in place: who asked, who
may approve, until when; then who approved or rejected and when, with the buttons removed.
"""

from __future__ import annotations

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    MarkdownTextObject,
    SectionBlock,
)

from bot.domain.approvals import APPROVED, RequestState, approvals_given, request_state
from bot.domain.config import Approvals
from bot.domain.models import Rollout
from bot.domain.text import shorten
from bot.slack.ids import ActionId, BlockId
from bot.slack.messages import SECTION_TEXT_LIMIT, rollout_title
from bot.slack.render import mention, mentions, mrkdwn, slack_date

HEADLINES = {
    RequestState.pending: ":lock: *Approval needed*",
    RequestState.approved: ":white_check_mark: *Approved*",
    RequestState.rejected: ":no_entry: *Rejected*",
    RequestState.expired: ":alarm_clock: *Approval request expired*",
    RequestState.cancelled: ":octagonal_sign: *Approval request cancelled*",
}


def approval_text(rollout: Rollout, policy: Approvals) -> str:
    """The plain-text fallback (notifications, screen readers)."""
    words = {
        RequestState.pending: "Approval needed",
        RequestState.approved: "Approved",
        RequestState.rejected: "Rejected",
        RequestState.expired: "Approval request expired",
        RequestState.cancelled: "Approval request cancelled",
    }
    return f"{words[request_state(rollout, policy)]}: {rollout_title(rollout)} ({rollout.id})"


def decision_lines(rollout: Rollout) -> list[str]:
    """Every recorded decision, in order: who and when."""
    lines = []
    for approval in rollout.approvals:
        icon = ":white_check_mark:" if approval.decision == APPROVED else ":no_entry:"
        lines.append(
            f"{icon} {approval.decision} by {mention(approval.user)} {slack_date(approval.at)}"
        )
    return lines


def build_approval_request(rollout: Rollout, policy: Approvals, expires_at: float) -> list[Block]:
    """The approval request as it stands: buttons only while it is pending."""
    state = request_state(rollout, policy)
    counted = len(approvals_given(rollout, policy))
    lines = [
        f"{HEADLINES[state]}: {rollout_title(rollout)}",
        f"requested by {mention(rollout.requested_by)} {slack_date(rollout.created_at)} · "
        f"`{rollout.reference}` · {rollout.id}",
    ]
    if rollout.forced:
        lines.append(f":warning: forced outside the deploy window: {rollout.reason}")
    eligible = [user for user in policy.approvers if user != rollout.requested_by]
    if state is RequestState.pending:
        lines.append(
            f"Needs {policy.required} approval(s) ({counted} so far) from {mentions(eligible)}; "
            f"expires {slack_date(expires_at)}."
        )
    elif state is RequestState.approved:
        lines.append(f"{counted} of {policy.required} approval(s): the rollout is on its way.")
    elif state is RequestState.rejected:
        lines.append("Not deployed.")
    elif state is RequestState.expired:
        ended = rollout.finished_at or expires_at
        lines.append(
            f"Expired {slack_date(ended)} with {counted} of {policy.required} approval(s): "
            "not deployed. Run `/deploy` again to ask anew."
        )
    else:
        lines.append(f"{mrkdwn(rollout.why()) or 'Cancelled'}: not deployed.")
    blocks: list[Block] = [
        SectionBlock(text=MarkdownTextObject(text=shorten("\n".join(lines), SECTION_TEXT_LIMIT)))
    ]
    decisions = decision_lines(rollout)
    if decisions:
        blocks.append(
            ContextBlock(elements=[MarkdownTextObject(text=shorten(" · ".join(decisions), 2000))])
        )
    if state is RequestState.pending:
        blocks.append(
            ActionsBlock(
                block_id=BlockId.approval_actions.value,
                elements=[
                    ButtonElement(
                        text="Approve",
                        action_id=ActionId.deploy_approve.value,
                        value=rollout.id,
                        style="primary",
                    ),
                    ButtonElement(
                        text="Reject",
                        action_id=ActionId.deploy_reject.value,
                        value=rollout.id,
                        style="danger",
                    ),
                ],
            )
        )
    return blocks
