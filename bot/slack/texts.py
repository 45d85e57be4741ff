"""The words of the announcements the Notifier's events become in a channel or thread."""

from __future__ import annotations

from collections.abc import Sequence

from bot.domain.incidents import Incident
from bot.slack.render import mention


def code_names(names: Sequence[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)


def pipelines_halted(pipelines: Sequence[str], by: str, reason: str) -> str:
    return (
        f":octagonal_sign: {code_names(pipelines)} halted by {mention(by)}: {reason}. "
        "New deploys are refused."
    )


def pipeline_resumed(pipeline: str, by: str, force_reason: str) -> str:
    how = f" (forced: {force_reason})" if force_reason else ""
    return f":large_green_circle: `{pipeline}` resumed by {mention(by)}{how}."


def rollback_confirmed(incident: Incident, by: str, rollout_id: str) -> str:
    return (
        f":rewind: {mention(by)} confirmed the rollback: `{incident.pipeline}` goes back to "
        f"`{incident.restored_version}` ({rollout_id})."
    )
