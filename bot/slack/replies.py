"""Answers to the person who asked, as Slack text: replies, reports, exports and refusals."""

from __future__ import annotations

from bot.domain.errors import ImmuneError
from bot.services.requests import Reply
from bot.services.status import Document, HistoryReport, PipelineAnswer, StatusReport
from bot.slack import messages
from bot.slack.render import mrkdwn


def answer_text(answer: PipelineAnswer) -> str:
    if isinstance(answer, Reply):
        return mrkdwn(answer.text)
    if isinstance(answer, StatusReport):
        return "\n\n".join(
            messages.status_text(s.name, s.pipeline, s.state, s.inflight, s.watching, s.engine)
            for s in answer.pipelines
        )
    if isinstance(answer, HistoryReport):
        return messages.history_text(answer.name, answer.rollouts, answer.audit)
    assert isinstance(answer, Document)
    return messages.code_block(answer.markdown) if answer.verbatim else answer.markdown


def error_text(error: ImmuneError) -> str:
    """A refusal: what happened, then what to do instead."""
    return mrkdwn(error.text())
