"""Five-whys answers as Slack delivers them: thread messages in mrkdwn, and the modal's state.

In the alert's thread a line starting with a label is an answer: `why 2: …`, `Why2 - …`,
`root cause: …`, `test: <https://…>` (any case; lines after it continue it). Anything else is
conversation and left alone. Answers leave here as plain text; the failing test as its URL.
"""

from __future__ import annotations

import html
import re
from typing import Any

from bot.domain.incidents import (
    ANALYSIS_FIELDS,
    FAILING_TEST,
    ROOT_CAUSE,
    WHYS,
    ParsedAnswers,
    failing_test_url,
)
from bot.slack.ids import InputActionId
from bot.slack.incident_messages import analysis_field_block_id
from bot.slack.render import escape

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
_CHANNEL = re.compile(r"<#(?P<id>[A-Z0-9]+)(?:\|(?P<name>[^>]*))?>")
_SPECIAL = re.compile(r"<!(?P<name>here|channel|everyone)(?:\|[^>]*)?>")


def plain_text(slack_text: str) -> str:
    """A message's text as a person reads it: links unwrapped, entities decoded."""
    text = _SLACK_LINK.sub(
        lambda m: f"{m['label']} ({m['url']})" if m["label"] else m["url"], slack_text
    )
    text = _CHANNEL.sub(lambda m: f"#{m['name'] or m['id']}", text)
    text = _SPECIAL.sub(lambda m: f"@{m['name']}", text)
    return html.unescape(text).strip()


def failing_test_link(text: str) -> str | None:
    """The http(s) URL in an answer (Slack's link markup or bare), or None."""
    match = _SLACK_LINK.search(text)
    return failing_test_url(match["url"] if match else html.unescape(text))


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
                shown = escape(plain_text(raw)[:80]) or "nothing"
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


# The modal ---------------------------------------------------------------------------------


def form_answers(values: dict[str, Any]) -> dict[str, str]:
    """The modal's answers by field ("" when left empty); fields the form lacked are absent."""
    answers: dict[str, str] = {}
    for name in ANALYSIS_FIELDS:
        block = values.get(analysis_field_block_id(name))
        if not isinstance(block, dict):
            continue
        element = block.get(InputActionId.answer.value)
        if not isinstance(element, dict):
            continue
        answers[name] = str(element.get("value") or "").strip()
    return answers


def form_errors(errors: dict[str, str]) -> dict[str, str]:
    """Errors by field, as `response_action: errors` wants them: by block_id."""
    return {analysis_field_block_id(name): error for name, error in errors.items()}
