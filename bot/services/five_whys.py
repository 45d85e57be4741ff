"""The five whys: answers from a thread or a modal, kept with the incident.

In the alert's thread a line starting with a label is an answer: `why 2: …`, `Why2 - …`,
`root cause: …`, `test: <https://…>` (any case; lines after it continue it). Anything else is
conversation and left alone. Answers are stored as plain text; the failing test as its URL.
"""

from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from bot.domain.incidents import ANALYSIS_FIELDS, FAILING_TEST, ROOT_CAUSE, WHYS, Incident
from bot.services.context import Context
from bot.services.incidents import (
    incident_for_thread,
    load_incident,
    update_incident,
)
from bot.slack import incident_messages
from bot.store.keys import Once

# A label at the start of a line, after optional quote marks, bullets and bold/italic marks;
# then a colon, or a dash followed by a space ("why 2 - …", but not "test-driven").
_LABEL = re.compile(
    r"^(?:&gt;|[\s>*_~•-])*"
    r"(?:(?P<why>why)\s*#?\s*(?P<number>\d+)?"
    r"|(?P<root>root[\s_-]*cause)"
    r"|(?P<test>(?:failing[\s_-]*)?tests?))"
    r"[*_~]*\s*(?::|[-\u2013\u2014](?=\s|$))[*_~]*\s*(?P<rest>.*)$",
    re.IGNORECASE,
)
# Slack delivers a typed link as <https://…> or <https://…|label>.
_SLACK_LINK = re.compile(r"<(?P<url>https?://[^|>\s]+)(?:\|(?P<label>[^>]*))?>")
_BARE_LINK = re.compile(r"https?://[^\s<>|]+")
_CHANNEL = re.compile(r"<#(?P<id>[A-Z0-9]+)(?:\|(?P<name>[^>]*))?>")
_SPECIAL = re.compile(r"<!(?P<name>here|channel|everyone)(?:\|[^>]*)?>")


@dataclass(frozen=True)
class ParsedAnswers:
    """What one message says: answers by field (ANALYSIS_FIELDS), and what was malformed."""

    answers: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def is_answer(self) -> bool:
        return bool(self.answers or self.problems)


def plain_text(slack_text: str) -> str:
    """A message's text as a person reads it: links unwrapped, entities decoded."""
    text = _SLACK_LINK.sub(
        lambda m: f"{m['label']} ({m['url']})" if m["label"] else m["url"], slack_text
    )
    text = _CHANNEL.sub(lambda m: f"#{m['name'] or m['id']}", text)
    text = _SPECIAL.sub(lambda m: f"@{m['name']}", text)
    return html.unescape(text).strip()


def failing_test_link(text: str) -> str | None:
    """The http(s) URL in an answer (Slack markup or bare), or None."""
    match = _SLACK_LINK.search(text)
    url = match["url"] if match else None
    if url is None:
        bare = _BARE_LINK.search(html.unescape(text))
        url = bare.group(0) if bare else None
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return url


def parse_answers(text: str) -> ParsedAnswers:
    """The answers in one thread message (pure)."""
    segments: list[tuple[re.Match[str], list[str]]] = []
    for line in text.splitlines():
        match = _LABEL.match(line)
        if match:
            segments.append((match, [match["rest"]]))
        elif segments:
            segments[-1][1].append(line)
    answers: dict[str, str] = {}
    problems: list[str] = []
    for match, lines in segments:
        raw = "\n".join(lines).strip()
        if match["why"]:
            if match["number"] is None:
                problems.append(
                    "Which why is that? Start the line with its number: `why 1: …` to `why 5: …`."
                )
                continue
            number = int(match["number"])
            if number not in WHYS:
                problems.append(
                    f"`why {number}` is not one of the five whys: use `why 1` to `why 5`."
                )
                continue
            name = f"why {number}"
        elif match["root"]:
            name = ROOT_CAUSE
        else:
            url = failing_test_link(raw)
            if url is None:
                shown = incident_messages.escape(plain_text(raw)[:80]) or "nothing"
                problems.append(
                    "`test:` takes a link to the failing test, like "
                    f"`test: https://ci.example.com/job/123`; `{shown}` is not a link."
                )
                continue
            answers[FAILING_TEST] = url
            continue
        value = plain_text(raw)
        if not value:
            problems.append(f"`{name}` is empty: write the answer after the colon.")
            continue
        answers[name] = value
    return ParsedAnswers(answers, problems)


# Thread answers ------------------------------------------------------------------------------


def record_thread_answer(
    ctx: Context,
    *,
    channel: str,
    thread_ts: str | None,
    user: str,
    text: str,
    ts: str,
    edited: bool,
    is_bot: bool,
) -> None:
    """A message in some thread: if it answers an incident's five whys, store it and reply."""
    if is_bot or not user or not thread_ts or thread_ts == ts:
        return
    incident_id = incident_for_thread(ctx.store, channel, thread_ts)
    if incident_id is None:
        return
    parsed = parse_answers(text)
    if not parsed.is_answer:
        if not edited:
            return
        # An edit that no longer answers anything still withdraws what the message answered.
        if ts not in load_incident(ctx.store, incident_id).answer_sources.values():
            return
    recorded: list[str] = []
    removed: list[str] = []

    def apply(incident: Incident) -> None:
        recorded.clear()
        removed.clear()
        if edited:
            for name, source in list(incident.answer_sources.items()):
                if source == ts and name not in parsed.answers:
                    incident.set_answer(name, "", user=user, source=ts)
                    removed.append(name)
        for name in ANALYSIS_FIELDS:
            if name in parsed.answers:
                incident.set_answer(name, parsed.answers[name], user=user, source=ts)
                recorded.append(name)

    incident = update_incident(ctx.store, incident_id, apply)
    # Storing is idempotent; auditing and answering happen once per text of a message: Slack
    # redelivers events it thinks were missed, and sends message_changed with the same text
    # when it unfurls a link.
    delivery = hashlib.sha256(f"{channel}|{ts}|{text}".encode()).hexdigest()
    if not ctx.store.claim_once(Once.five_whys_reply, delivery):
        return
    ctx.audit(
        actor=user,
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
    ctx.notifier.incident_changed(
        incident,
        incident_messages.analysis_status(
            incident, recorded=recorded, removed=removed, problems=parsed.problems, user=user
        ),
    )


# The modal -----------------------------------------------------------------------------------


def build_modal(ctx: Context, incident_id: str) -> dict[str, Any]:
    """The five_whys modal, pre-filled with what is already recorded."""
    incident = load_incident(ctx.store, incident_id)
    view: dict[str, Any] = incident_messages.build_five_whys_modal(incident).to_dict()
    return view


def _submitted(values: dict[str, Any], block_id: str) -> str | None:
    """An input's text ("" when left empty), or None when the form had no such input."""
    block = values.get(block_id)
    if not isinstance(block, dict):
        return None
    element = block.get("answer")
    if not isinstance(element, dict):
        return None
    return str(element.get("value") or "").strip()


def record_modal(
    ctx: Context, *, incident_id: str, user: str, values: dict[str, Any]
) -> dict[str, str]:
    """Store the modal's answers; returns errors by block_id (empty when accepted).

    The form shows every answer, so what is submitted replaces what was recorded: an input
    emptied clears its answer.
    """
    load_incident(ctx.store, incident_id)  # NotFound for a stale or forged form
    submitted: dict[str, str] = {}
    errors: dict[str, str] = {}
    for name in ANALYSIS_FIELDS:
        block_id = incident_messages.analysis_field_block_id(name)
        value = _submitted(values, block_id)
        if value is None:
            continue
        if name == FAILING_TEST and value:
            url = failing_test_link(value)
            if url is None:
                errors[block_id] = "A link to the failing test, like https://ci.example.com/job/123"
                continue
            value = url
        submitted[name] = value
    if errors:
        return errors
    recorded: list[str] = []
    removed: list[str] = []

    def apply(incident: Incident) -> None:
        recorded.clear()
        removed.clear()
        for name, value in submitted.items():
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
    ctx.notifier.incident_changed(
        incident,
        incident_messages.analysis_status(
            incident, recorded=recorded, removed=removed, problems=[], user=user
        ),
    )
    return {}
