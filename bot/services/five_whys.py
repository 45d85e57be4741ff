"""The five whys: answers from a thread or a form, kept with the incident.

The chat layer reads the answers out of what people typed (bot/slack/five_whys.py); here they
are stored, audited once per message text, and announced.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from bot.domain.incidents import (
    ANALYSIS_FIELDS,
    FAILING_TEST,
    AnalysisChange,
    Incident,
    ParsedAnswers,
    failing_test_url,
)
from bot.services.context import Context
from bot.services.incidents import incident_for_thread, load_incident, update_incident
from bot.store.keys import Once

FAILING_TEST_HINT = "A link to the failing test, like https://ci.example.com/job/123"


@dataclass(frozen=True)
class ThreadMessage:
    """A message (or its edit) in some thread, with the answers read from it."""

    channel: str
    thread_ts: str | None
    ts: str
    user: str
    text: str  # as delivered: a new text is a new delivery, the same text a redelivery
    answers: ParsedAnswers
    edited: bool = False
    is_bot: bool = False


def record_thread_answer(ctx: Context, message: ThreadMessage) -> None:
    """If the message answers an incident's five whys, store the answers and reply."""
    if message.is_bot or not message.user or not message.thread_ts:
        return
    if message.thread_ts == message.ts:
        return
    incident_id = incident_for_thread(ctx.store, message.channel, message.thread_ts)
    if incident_id is None:
        return
    parsed = message.answers
    if not parsed.is_answer:
        if not message.edited:
            return
        # An edit that no longer answers anything still withdraws what the message answered.
        if message.ts not in load_incident(ctx.store, incident_id).answer_sources.values():
            return
    recorded: list[str] = []
    removed: list[str] = []

    def apply(incident: Incident) -> None:
        recorded.clear()
        removed.clear()
        if message.edited:
            for name, source in list(incident.answer_sources.items()):
                if source == message.ts and name not in parsed.answers:
                    incident.set_answer(name, "", user=message.user, source=message.ts)
                    removed.append(name)
        for name in ANALYSIS_FIELDS:
            if name in parsed.answers:
                incident.set_answer(
                    name, parsed.answers[name], user=message.user, source=message.ts
                )
                recorded.append(name)

    incident = update_incident(ctx.store, incident_id, apply)
    # Storing is idempotent; auditing and answering happen once per text of a message: Slack
    # redelivers events it thinks were missed, and sends message_changed with the same text
    # when it unfurls a link.
    delivery = hashlib.sha256(f"{message.channel}|{message.ts}|{message.text}".encode()).hexdigest()
    if not ctx.store.claim_once(Once.five_whys_reply, delivery):
        return
    ctx.audit(
        actor=message.user,
        action="five_whys.answer",
        pipeline=incident.pipeline,
        outcome="recorded" if recorded or removed else "malformed",
        detail=f"incident {incident.id}: "
        + "; ".join(
            part
            for part in (
                ", ".join(recorded),
                "removed " + ", ".join(removed) if removed else "",
                f"{len(parsed.problems)} malformed" if parsed.problems else "",
            )
            if part
        ),
    )
    ctx.notifier.analysis_recorded(
        incident,
        AnalysisChange(
            user=message.user, recorded=recorded, removed=removed, problems=parsed.problems
        ),
    )


def record_form(
    ctx: Context, *, incident_id: str, user: str, submitted: dict[str, str]
) -> dict[str, str]:
    """Store the form's answers (by field); returns errors by field (empty when accepted).

    The form shows every answer, so what is submitted replaces what was recorded: an input
    emptied clears its answer.
    """
    load_incident(ctx.store, incident_id)  # NotFound for a stale or forged form
    answers: dict[str, str] = {}
    errors: dict[str, str] = {}
    for name, value in submitted.items():
        if name not in ANALYSIS_FIELDS:
            continue
        if name == FAILING_TEST and value:
            url = failing_test_url(value)
            if url is None:
                errors[name] = FAILING_TEST_HINT
                continue
            value = url
        answers[name] = value
    if errors:
        return errors
    recorded: list[str] = []
    removed: list[str] = []

    def apply(incident: Incident) -> None:
        recorded.clear()
        removed.clear()
        for name, value in answers.items():
            if incident.answer(name) == value:
                continue
            incident.set_answer(name, value, user=user, source="modal")
            (recorded if value else removed).append(name)

    incident = update_incident(ctx.store, incident_id, apply)
    if not recorded and not removed:
        return {}
    ctx.audit(
        actor=user,
        action="five_whys.form",
        pipeline=incident.pipeline,
        outcome="recorded",
        detail=f"incident {incident.id}: "
        + ", ".join(recorded + [f"cleared {name}" for name in removed]),
    )
    ctx.notifier.analysis_recorded(
        incident, AnalysisChange(user=user, recorded=recorded, removed=removed)
    )
    return {}
