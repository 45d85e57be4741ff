"""Every action_id, callback_id and block_id the bot uses (DESIGN.md, "Interactive IDs")."""

from __future__ import annotations

from enum import StrEnum


class ActionId(StrEnum):
    deploy_approve = "deploy_approve"
    deploy_reject = "deploy_reject"
    rollback_confirm = "rollback_confirm"
    five_whys_open = "five_whys_open"
    canary_promote = "canary_promote"
    canary_abort = "canary_abort"
    home_previous = "home_previous"
    home_next = "home_next"
    deploy_queue = "deploy_queue"  # value: "<pipeline> <version>"
    deploy_unqueue = "deploy_unqueue"  # value: the pipeline


class CallbackId(StrEnum):
    five_whys = "five_whys"
    deploy_form = "deploy_form"
    rollback_form = "rollback_form"


class BlockId(StrEnum):
    approval_actions = "approval_actions"
    breach_actions = "breach_actions"
    canary_actions = "canary_actions"
    home_pages = "home_pages"
    queue_actions = "queue_actions"
    form_pipeline = "pipeline"  # the deploy and rollback forms' blocks (DESIGN.md)
    form_version = "version"
    form_reason = "reason"
    five_whys_why = "five_whys_why_{n}"  # formatted with n = 1…5
    five_whys_root_cause = "five_whys_root_cause"
    five_whys_test = "five_whys_test"


class InputActionId(StrEnum):
    """action_ids of the modal's inputs (view_submission state values are keyed by them)."""

    answer = "answer"
    pipeline = "pipeline"
    version = "version"
