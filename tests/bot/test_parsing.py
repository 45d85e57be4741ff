"""What people type after a slash command: parsed, or refused with a usage line; never a crash."""

from __future__ import annotations

import shlex
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.domain import parsing
from bot.domain.errors import UsageError
from bot.domain.parsing import (
    MAX_COMMAND_TEXT,
    USAGE,
    DeployArgs,
    HaltArgs,
    PipelineArgs,
    ResumeArgs,
    RollbackArgs,
    parse_deploy,
    parse_halt,
    parse_pipeline,
    parse_resume,
    parse_rollback,
    wants_help,
)
from bot.domain.text import as_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("web 1.4.2", DeployArgs("web", "1.4.2", None)),
        ("  WEB   2  ", DeployArgs("web", "2", None)),
        ("web demo/web@sha256:" + "a" * 64, DeployArgs("web", "demo/web@sha256:" + "a" * 64, None)),
        ("web 2 --force hotfix for the outage", DeployArgs("web", "2", "hotfix for the outage")),
        ("web 2 -f late fix", DeployArgs("web", "2", "late fix")),
        ("web 2 \u2014force em dash from a phone", DeployArgs("web", "2", "em dash from a phone")),
        ('web 2 --force "quoted reason"', DeployArgs("web", "2", "quoted reason")),
        ("web 2 --force \u201csmart quotes\u201d", DeployArgs("web", "2", "smart quotes")),
    ],
)
def test_deploy(text: str, expected: DeployArgs) -> None:
    assert parse_deploy(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "a pipeline and a version"),
        ("web", "a pipeline and a version"),
        ("web 1 2", "only a pipeline and a version"),
        ("web 2 --force", "`--force` needs a reason"),
        ("web 2 --force   ", "`--force` needs a reason"),
        ("web --dry-run 2", "Unknown option `--dry-run`"),
        ('web "2', "Could not read that"),
        ("web " + "x" * MAX_COMMAND_TEXT, "too long"),
    ],
)
def test_deploy_refused(text: str, why: str) -> None:
    with pytest.raises(UsageError) as refused:
        parse_deploy(text)
    assert why in refused.value.message
    assert refused.value.hint == as_text(USAGE["/deploy"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [("web", RollbackArgs("web", None)), ("Web 1.4.1", RollbackArgs("web", "1.4.1"))],
)
def test_rollback(text: str, expected: RollbackArgs) -> None:
    assert parse_rollback(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "a pipeline and, optionally"),
        ("web 1 2", "optionally"),
        ("web --force x", "no options"),
    ],
)
def test_rollback_refused(text: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        parse_rollback(text)


def test_halt_and_resume() -> None:
    assert parse_halt("all  bad  deploy") == HaltArgs("all", "bad deploy")
    assert parse_halt("Web") == HaltArgs("web", "")
    assert parse_resume("web") == ResumeArgs("web", None)
    assert parse_resume("web --force five whys done on paper") == ResumeArgs(
        "web", "five whys done on paper"
    )
    for refused in (lambda: parse_halt(""), lambda: parse_resume(""), lambda: parse_resume("a b")):
        with pytest.raises(UsageError):
            refused()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", PipelineArgs("status", None)),
        ("Web", PipelineArgs("status", "web")),
        ("history web", PipelineArgs("history", "web")),
        ("HISTORY Web", PipelineArgs("history", "web")),
        ("audit web", PipelineArgs("audit", "web")),
        ("Audit WEB", PipelineArgs("audit", "web")),
        ("incident I-20260101-ABC", PipelineArgs("incident", "I-20260101-ABC")),
    ],
)
def test_pipeline(text: str, expected: PipelineArgs) -> None:
    assert parse_pipeline(text) == expected


@pytest.mark.parametrize("text", ["audit", "audit web extra", "history", "web api"])
def test_pipeline_refused(text: str) -> None:
    with pytest.raises(UsageError) as refused:
        parse_pipeline(text)
    assert refused.value.hint == as_text(USAGE["/pipeline"])


def test_usage_names_the_audit_export() -> None:
    assert "`/pipeline audit <pipeline>`" in USAGE["/pipeline"]
    assert "`--force`" in USAGE["/deploy"] and "admins" in USAGE["/deploy"]


@pytest.mark.parametrize("text", ["help", " HELP ", "-h", "--help", "?"])
def test_help(text: str) -> None:
    assert wants_help(text)


# Arbitrary text ---------------------------------------------------------------------------

Parser = Callable[[str], object]
PARSERS: dict[str, Parser] = {
    "/deploy": parse_deploy,
    "/rollback": parse_rollback,
    "/halt": parse_halt,
    "/resume": parse_resume,
    "/pipeline": parse_pipeline,
}

# What people (and phones, and pastes) produce: words, options, quotes of every kind, Slack's
# own markup, control characters, and anything else Unicode holds.
pieces = st.one_of(
    st.sampled_from(
        [
            "web",
            "all",
            "history",
            "audit",
            "incident",
            "--force",
            "-f",
            "\u2014force",
            "--",
            "-",
            '"',
            "'",
            "\u201c",
            "\u201d",
            "\\",
            "<@U0DEV1>",
            "<#C0DEPLOY|deploys>",
            "<https://example.test|x>",
            "1.4.2",
            "sha256:" + "0" * 64,
            "help",
            "\n",
            "\t",
            "\x00",
            " ",
        ]
    ),
    st.text(max_size=20),
)
arbitrary_text = st.one_of(
    st.text(),
    st.lists(pieces, max_size=12).map(" ".join),
    st.lists(pieces, max_size=12).map("".join),
)


@settings(max_examples=400, deadline=None)
@given(command=st.sampled_from(sorted(PARSERS)), text=arbitrary_text)
def test_any_text_is_parsed_or_refused_with_usage(command: str, text: str) -> None:
    try:
        parsed = PARSERS[command](text)
    except UsageError as refused:
        assert refused.message.strip()
        assert refused.hint == as_text(USAGE[command])
        assert refused.text().plain().strip()
        return
    # Whatever was parsed names a pipeline (or "all") that is a single, lower-case word.
    subject = getattr(parsed, "pipeline", None) or getattr(parsed, "subject", None)
    if subject is not None and getattr(parsed, "view", "") != "incident":
        assert subject == subject.lower()


@settings(max_examples=100, deadline=None)
@given(text=st.text(min_size=MAX_COMMAND_TEXT + 1, max_size=MAX_COMMAND_TEXT + 50))
def test_overlong_text_is_refused_before_parsing(text: str) -> None:
    for command, parse in PARSERS.items():
        with pytest.raises(UsageError, match="too long"):
            parse(text)
        assert command in USAGE


@settings(max_examples=600, deadline=None)
@given(text=arbitrary_text)
def test_words_split_as_shlex_splits_them(text: str) -> None:
    # Text without quotes or backslashes skips shlex (a fast path): the words must be the same.
    text = text.replace("\u201c", "").replace("\u201d", "").replace("'", "").replace('"', "")
    text = text.replace("\\", "")[:MAX_COMMAND_TEXT]
    assert parsing._words("/halt", text) == shlex.split(text)
