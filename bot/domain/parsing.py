"""Parsing what people type after a slash command. Pure functions; UsageError on bad input."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from bot.domain.errors import UsageError

MAX_COMMAND_TEXT = 2000

# What shlex treats specially (in its POSIX mode, as shlex.split uses it) besides its
# whitespace: quotes and the escape. Text without them is split by shlex exactly as by
# _PLAIN_WORD, at a twentieth of the cost (shlex reads a character at a time).
_SHELL_SPECIAL = re.compile(r"['\"\\]")
_PLAIN_WORD = re.compile(r"[^ \t\r\n]+")  # shlex's whitespace is these four, no other

USAGE = {
    "/deploy": "`/deploy <pipeline> <version> [--force <reason…>]`: deploy a version "
    "(an image tag like `1.4.2`, or a full reference with digest). "
    "`--force` (admins) deploys outside a deploy window. "
    "`/deploy` or `/deploy <pipeline>` opens a form to pick the pipeline and version.",
    "/rollback": "`/rollback <pipeline> [<version>]`: go back to the last good version, "
    "or to the version named.",
    "/halt": "`/halt <pipeline>|all [reason…]`: stop new deploys; a rollout in flight stops "
    "at a safe point.",
    "/resume": "`/resume <pipeline> [--force <reason…>]`: re-open a halted pipeline once its "
    "five whys, root cause and failing test are recorded (`--force`: admins, audited).",
    "/pipeline": "`/pipeline [<pipeline>]`: where pipelines stand. "
    "`/pipeline history <pipeline>`: past rollouts and who did what. "
    "`/pipeline audit <pipeline>`: the audit trail as Markdown. "
    "`/pipeline incident <id>`: an incident as Markdown.",
}


@dataclass(frozen=True)
class DeployArgs:
    pipeline: str
    version: str
    force_reason: str | None


@dataclass(frozen=True)
class RollbackArgs:
    pipeline: str
    version: str | None


@dataclass(frozen=True)
class HaltArgs:
    pipeline: str  # a name, or "all"
    reason: str


@dataclass(frozen=True)
class ResumeArgs:
    pipeline: str
    force_reason: str | None


@dataclass(frozen=True)
class PipelineArgs:
    view: str  # "status" | "history" | "audit" | "incident"
    subject: str | None


def _words(command: str, text: str) -> list[str]:
    if len(text) > MAX_COMMAND_TEXT:
        raise UsageError(
            f"That is too long for {command} ({len(text)} characters).", hint=USAGE[command]
        )
    text = text.replace("\u201c", '"').replace("\u201d", '"')
    if _SHELL_SPECIAL.search(text) is None:
        return _PLAIN_WORD.findall(text)
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"Could not read that: {exc}.", hint=USAGE[command]) from exc


def wants_help(text: str) -> bool:
    return text.strip().lower() in ("help", "-h", "--help", "?")


def _split_force(command: str, words: list[str]) -> tuple[list[str], str | None]:
    """Cut `--force <reason…>` off the end; a force without a reason is refused."""
    for index, word in enumerate(words):
        if word in ("--force", "-f", "—force"):
            reason = " ".join(words[index + 1 :]).strip()
            if not reason:
                raise UsageError(
                    "`--force` needs a reason after it; it is audited.", hint=USAGE[command]
                )
            return words[:index], reason
        if word.startswith("--"):
            raise UsageError(f"Unknown option `{word}`.", hint=USAGE[command])
    return words, None


def parse_deploy(text: str) -> DeployArgs:
    words, force = _split_force("/deploy", _words("/deploy", text))
    if len(words) != 2:
        what = "a pipeline and a version" if len(words) < 2 else "only a pipeline and a version"
        raise UsageError(f"/deploy takes {what}.", hint=USAGE["/deploy"])
    return DeployArgs(pipeline=words[0].lower(), version=words[1], force_reason=force)


def parse_rollback(text: str) -> RollbackArgs:
    words = _words("/rollback", text)
    if any(word.startswith("--") for word in words):
        raise UsageError("/rollback takes no options.", hint=USAGE["/rollback"])
    if not 1 <= len(words) <= 2:
        raise UsageError(
            "/rollback takes a pipeline and, optionally, a version.", hint=USAGE["/rollback"]
        )
    return RollbackArgs(pipeline=words[0].lower(), version=words[1] if len(words) == 2 else None)


def parse_halt(text: str) -> HaltArgs:
    words = _words("/halt", text)
    if not words:
        raise UsageError("/halt needs a pipeline, or `all`.", hint=USAGE["/halt"])
    return HaltArgs(pipeline=words[0].lower(), reason=" ".join(words[1:]).strip())


def parse_resume(text: str) -> ResumeArgs:
    words, force = _split_force("/resume", _words("/resume", text))
    if len(words) != 1:
        raise UsageError("/resume takes one pipeline.", hint=USAGE["/resume"])
    return ResumeArgs(pipeline=words[0].lower(), force_reason=force)


def parse_pipeline(text: str) -> PipelineArgs:
    words = _words("/pipeline", text)
    if not words:
        return PipelineArgs("status", None)
    if words[0].lower() in ("history", "audit", "incident"):
        if len(words) != 2:
            raise UsageError(
                f"`/pipeline {words[0].lower()}` takes one argument.", hint=USAGE["/pipeline"]
            )
        return PipelineArgs(
            words[0].lower(), words[1] if words[0].lower() == "incident" else words[1].lower()
        )
    if len(words) != 1:
        raise UsageError("/pipeline takes at most one pipeline.", hint=USAGE["/pipeline"])
    return PipelineArgs("status", words[0].lower())
