"""The five whys: parsing thread answers, storing them, the modal, and what /resume waits for."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from bot.domain.errors import NotFound
from bot.domain.incidents import ANALYSIS_FIELDS, Incident, KpiSample
from bot.services import five_whys, incidents
from bot.services.context import Context
from bot.services.five_whys import ThreadMessage
from bot.services.incidents import (
    EXPORT_LIMIT,
    create_incident,
    load_incident,
    record_alert,
)
from bot.slack import five_whys as slack_five_whys
from bot.slack.ids import BlockId, CallbackId, InputActionId
from bot.slack.incident_messages import build_five_whys_modal
from tests.support.domain import CHANNEL, START, RecordingNotifier, domain_context, web_config

ALERT_TS = "1800000500.000100"
COMPLETE = (
    "why 1: the error rate rose because checkout answered 500\n"
    "why 2: the new release read a config key that no longer exists\n"
    "why 3: the key was renamed in the same release\n"
    "why 4: nothing checks that every key read exists\n"
    "why 5: config and code are reviewed apart\n"
    "root cause: config keys are not validated at start-up\n"
    "test: <https://ci.example.com/job/42|CI run 42>"
)

# Parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "field", "value"),
    [
        ("why 2: the cache was cold", "why 2", "the cache was cold"),
        ("why2:cold cache", "why 2", "cold cache"),
        ("Why 2 - the cache", "why 2", "the cache"),
        ("WHY 3 \u2014 a dash", "why 3", "a dash"),
        ("why #4: hash", "why 4", "hash"),
        ("*why 5*: in bold", "why 5", "in bold"),
        ("&gt; why 1: quoted", "why 1", "quoted"),
        ("root cause: no schema check", "root cause", "no schema check"),
        ("Root-Cause - no schema check", "root cause", "no schema check"),
        ("RootCause: joined", "root cause", "joined"),
        ("test: <https://ci.example.com/job/1>", "failing test", "https://ci.example.com/job/1"),
        (
            "Test: <https://ci.example.com/job/1|CI run>",
            "failing test",
            "https://ci.example.com/job/1",
        ),
        (
            "failing test: https://ci.example.com/t?x=1",
            "failing test",
            "https://ci.example.com/t?x=1",
        ),
        ("why 1: a &amp; b &lt;c&gt;", "why 1", "a & b <c>"),
        (
            "why 1: see <https://wiki.example.com/x|the wiki>",
            "why 1",
            "see the wiki (https://wiki.example.com/x)",
        ),
    ],
)
def test_answers_are_read_in_their_usual_forms(text: str, field: str, value: str) -> None:
    parsed = slack_five_whys.parse_answers(text)
    assert parsed.answers == {field: value}
    assert parsed.problems == []


@pytest.mark.parametrize(
    "text",
    [
        "Why did it fail?",
        "I think why 2: is wrong",
        "test-driven development would have caught it",
        "testing: something",
        "whyyy: no",
        "",
        "<@U0DEV2> can you look?",
    ],
)
def test_conversation_is_not_an_answer(text: str) -> None:
    assert not slack_five_whys.parse_answers(text).is_answer


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("why 7: too many", "`why 7` is not one of the five whys"),
        ("why 0: too few", "`why 0` is not one of the five whys"),
        ("why: which one", "Which why is that?"),
        ("why 5:", "`why 5` is empty"),
        ("root cause:   ", "`root cause` is empty"),
        ("test: not-a-link", "`not-a-link` is not a link"),
        ("test: <mailto:a@example.com|mail>", "is not a link"),
        ("test: ftp://example.com/x", "is not a link"),
    ],
)
def test_malformed_answers_name_the_problem(text: str, problem: str) -> None:
    parsed = slack_five_whys.parse_answers(text)
    assert parsed.answers == {}
    assert len(parsed.problems) == 1 and problem in parsed.problems[0]


def test_one_message_may_answer_several_and_continue_lines() -> None:
    parsed = slack_five_whys.parse_answers(
        "Here is what we found:\nwhy 1: first line\nsecond line\nwhy 2: b\nwhy 9: nope"
    )
    assert parsed.answers == {"why 1": "first line\nsecond line", "why 2": "b"}
    assert len(parsed.problems) == 1 and "why 9" in parsed.problems[0]


def test_the_complete_example_answers_everything() -> None:
    assert set(slack_five_whys.parse_answers(COMPLETE).answers) == set(ANALYSIS_FIELDS)


# Recording thread answers -------------------------------------------------------------------


@pytest.fixture
def ctx(redis_client: redis.Redis) -> Iterator[Context]:
    with domain_context(redis_client, web_config()) as context:
        yield context


def notes(ctx: Context) -> list[str]:
    assert isinstance(ctx.notifier, RecordingNotifier)
    return [note for _, note in ctx.notifier.notes]


def open_incident(ctx: Context, **fields: Any) -> Incident:
    values: dict[str, Any] = {
        "id": "inc-test-1",
        "pipeline": "web",
        "channel": CHANNEL,
        "rollout_id": "r-bad",
        "bad_version": "3",
        "restored_version": "1",
        "kpi": "error_rate",
        "query": "q",
        "tolerance": "error_rate ≤ 0.1",
        "kpi_max": 0.1,
        "for_polls": 2,
        "opened_at": START,
        "live_at": START - 10,
    }
    incident = Incident.model_validate({**values, **fields})
    create_incident(ctx.store, incident)
    return record_alert(ctx.store, incident.id, ALERT_TS)


def say(ctx: Context, text: str, *, ts: str, user: str = "U0DEV1", **overrides: Any) -> None:
    message: dict[str, Any] = {
        "channel": CHANNEL,
        "thread_ts": ALERT_TS,
        "user": user,
        "text": text,
        "ts": ts,
        "edited": False,
        "is_bot": False,
    }
    message.update(overrides)
    answers = slack_five_whys.parse_answers(message["text"])
    five_whys.record_thread_answer(ctx, ThreadMessage(answers=answers, **message))


def test_thread_answers_are_stored_and_the_bot_says_what_is_missing(ctx: Context) -> None:
    incident = open_incident(ctx)
    assert incident.thread_ts == ALERT_TS
    assert incidents.incident_for_thread(ctx.store, CHANNEL, ALERT_TS) == incident.id

    say(ctx, "why 1: checkout answered 500", ts="1800000600.000001")
    stored = load_incident(ctx.store, incident.id)
    assert stored.whys == {1: "checkout answered 500"}
    assert stored.answered_by == {"why 1": "U0DEV1"}
    [reply] = notes(ctx)
    assert "Recorded why 1" in reply
    assert "Still missing: why 2, why 3, why 4, why 5, root cause, failing test." in reply
    assert incidents.missing_analysis(ctx, incident.id) == list(ANALYSIS_FIELDS[1:])

    say(ctx, COMPLETE, ts="1800000601.000001", user="U0DEV2")
    assert incidents.missing_analysis(ctx, incident.id) == []
    assert "`/resume web` will re-open the pipeline" in notes(ctx)[-1]
    stored = load_incident(ctx.store, incident.id)
    assert stored.failing_test == "https://ci.example.com/job/42"
    assert stored.answered_by["why 1"] == "U0DEV2", "a later answer replaces an earlier one"


def test_a_malformed_answer_gets_a_specific_reply_and_changes_nothing(ctx: Context) -> None:
    incident = open_incident(ctx)
    say(ctx, "why 7: one too many", ts="1800000600.000001")
    say(ctx, "test: not-a-link", ts="1800000600.000002")
    first, second = notes(ctx)
    assert "`why 7` is not one of the five whys" in first
    assert "`not-a-link` is not a link" in second
    assert "Still missing: why 1" in second
    assert incidents.missing_analysis(ctx, incident.id) == list(ANALYSIS_FIELDS)


@pytest.mark.parametrize(
    "overrides",
    [
        {"is_bot": True},  # the bot's own template says "Why 1:" too
        {"thread_ts": "1800000999.000001"},  # another thread
        {"thread_ts": None},  # a top-level message
        {"thread_ts": ALERT_TS, "ts": ALERT_TS},  # the alert itself
        {"channel": "C0OTHER"},  # the same ts in another channel
        {"text": "Does anyone know why the cache was cold?"},  # conversation
    ],
    ids=["bot", "other-thread", "top-level", "the-alert", "other-channel", "conversation"],
)
def test_messages_that_are_not_answers_are_left_alone(
    ctx: Context, overrides: dict[str, Any]
) -> None:
    incident = open_incident(ctx)
    message = {"text": "why 1: an answer", "ts": "1800000600.000001", **overrides}
    say(ctx, **message)
    assert notes(ctx) == []
    assert load_incident(ctx.store, incident.id).whys == {}


def test_an_edit_replaces_what_the_message_answered(ctx: Context) -> None:
    incident = open_incident(ctx)
    say(ctx, "why 2: first thought", ts="1800000600.000001")
    say(ctx, "why 1: from someone else", ts="1800000600.000002", user="U0DEV2")

    say(ctx, "why 2: second thought", ts="1800000600.000001", edited=True)
    assert load_incident(ctx.store, incident.id).whys == {
        1: "from someone else",
        2: "second thought",
    }

    # Re-numbered: why 2 goes, why 3 comes; the other person's why 1 stays.
    say(ctx, "why 3: second thought", ts="1800000600.000001", edited=True)
    assert load_incident(ctx.store, incident.id).whys == {
        1: "from someone else",
        3: "second thought",
    }
    assert "edit removed why 2" in notes(ctx)[-1] and "Recorded why 3" in notes(ctx)[-1]

    # Edited into conversation: its answer is withdrawn.
    say(ctx, "never mind", ts="1800000600.000001", edited=True)
    assert load_incident(ctx.store, incident.id).whys == {1: "from someone else"}
    assert "edit removed why 3" in notes(ctx)[-1]

    # An edit of a message that never answered anything stays silent.
    replies = len(notes(ctx))
    say(ctx, "just chatting", ts="1800000600.000009", edited=True)
    assert len(notes(ctx)) == replies


def test_a_redelivered_answer_is_stored_once_and_answered_once(ctx: Context) -> None:
    incident = open_incident(ctx)
    for _ in range(3):
        say(ctx, "why 1: once", ts="1800000600.000001")
    assert load_incident(ctx.store, incident.id).whys == {1: "once"}
    assert len(notes(ctx)) == 1


def test_an_unfurl_is_not_an_edit_worth_answering(ctx: Context) -> None:
    # Slack sends message_changed, text unchanged, when it attaches a link preview.
    incident = open_incident(ctx)
    say(ctx, "test: <https://ci.example.com/1>", ts="1800000600.000001")
    say(ctx, "test: <https://ci.example.com/1>", ts="1800000600.000001", edited=True)
    assert load_incident(ctx.store, incident.id).failing_test == "https://ci.example.com/1"
    assert len(notes(ctx)) == 1


# The modal ----------------------------------------------------------------------------------


def test_the_modal_is_prefilled_and_keyed_by_the_incident(ctx: Context) -> None:
    incident = open_incident(ctx)
    say(ctx, "why 1: already known\ntest: <https://ci.example.com/1>", ts="1800000600.000001")
    view = build_five_whys_modal(load_incident(ctx.store, incident.id)).to_dict()
    assert view["type"] == "modal"
    assert view["callback_id"] == CallbackId.five_whys.value
    assert view["private_metadata"] == incident.id
    inputs = {b["block_id"]: b for b in view["blocks"] if b["type"] == "input"}
    assert list(inputs) == [
        *(BlockId.five_whys_why.value.format(n=n) for n in range(1, 6)),
        BlockId.five_whys_root_cause.value,
        BlockId.five_whys_test.value,
    ]
    assert all(b["element"]["action_id"] == InputActionId.answer.value for b in inputs.values())
    assert inputs["five_whys_why_1"]["element"]["initial_value"] == "already known"
    assert inputs["five_whys_test"]["element"]["initial_value"] == "https://ci.example.com/1"
    assert "initial_value" not in inputs["five_whys_why_2"]["element"]


def record_modal(
    ctx: Context, *, incident_id: str, user: str, values: dict[str, Any]
) -> dict[str, str]:
    """The form's path from Slack's view state to the store, as handlers/views.py takes it."""
    submitted = slack_five_whys.form_answers(values)
    errors = five_whys.record_form(ctx, incident_id=incident_id, user=user, submitted=submitted)
    return slack_five_whys.form_errors(errors)


def form(**answers: str) -> dict[str, Any]:
    return {
        block_id: {InputActionId.answer.value: {"type": "plain_text_input", "value": value}}
        for block_id, value in answers.items()
    }


def test_the_modal_records_answers_and_reports_what_is_missing(ctx: Context) -> None:
    incident = open_incident(ctx)
    errors = record_modal(
        ctx,
        incident_id=incident.id,
        user="U0DEV2",
        values=form(five_whys_why_1="one", five_whys_root_cause="the cause", five_whys_why_2=""),
    )
    assert errors == {}
    stored = load_incident(ctx.store, incident.id)
    assert stored.whys == {1: "one"} and stored.root_cause == "the cause"
    assert stored.answer_sources == {"why 1": "modal", "root cause": "modal"}
    assert "Recorded why 1, root cause from <@U0DEV2>" in notes(ctx)[-1]
    assert "Still missing: why 2, why 3, why 4, why 5, failing test." in notes(ctx)[-1]


def test_the_modal_refuses_a_test_that_is_not_a_link(ctx: Context) -> None:
    incident = open_incident(ctx)
    errors = record_modal(
        ctx,
        incident_id=incident.id,
        user="U0DEV2",
        values=form(five_whys_why_1="one", five_whys_test="the flaky one"),
    )
    assert set(errors) == {"five_whys_test"}
    assert load_incident(ctx.store, incident.id).whys == {}, "nothing is half-saved"
    assert notes(ctx) == []


def test_emptying_an_input_clears_that_answer(ctx: Context) -> None:
    incident = open_incident(ctx)
    say(ctx, "why 1: one\nwhy 2: two", ts="1800000600.000001")
    record_modal(
        ctx,
        incident_id=incident.id,
        user="U0DEV1",
        values=form(five_whys_why_1="one", five_whys_why_2=""),
    )
    assert load_incident(ctx.store, incident.id).whys == {1: "one"}
    assert "edit removed why 2" in notes(ctx)[-1]


def test_an_unknown_incident_is_not_found(ctx: Context) -> None:
    with pytest.raises(NotFound):
        build_five_whys_modal(load_incident(ctx.store, "inc-nope"))
    with pytest.raises(NotFound):
        record_modal(ctx, incident_id="inc-nope", user="U0DEV1", values={})


# Resume summary and export ------------------------------------------------------------------


def test_record_resume_posts_the_summary_in_the_thread(ctx: Context) -> None:
    incident = open_incident(ctx)
    say(ctx, COMPLETE, ts="1800000600.000001")
    incidents.record_resume(ctx, incident.id, "U0LEAD", "")
    stored = load_incident(ctx.store, incident.id)
    assert stored.resumed_by == "U0LEAD" and stored.resumed_at == START
    summary = notes(ctx)[-1]
    assert "`web` resumed by <@U0LEAD>" in summary
    assert ">*Why 3:* the key was renamed in the same release" in summary
    assert ">*Failing test:* <https://ci.example.com/job/42>" in summary


def test_export_is_markdown_with_timeline_samples_and_analysis(ctx: Context) -> None:
    incident = open_incident(
        ctx,
        samples=[
            KpiSample(at=START - 9 + i, slot=i, kpi="error_rate", value=v, verdict=verdict)
            for i, (v, verdict) in enumerate(
                [(None, "warmup"), (0.0, "ok"), (0.5, "breach"), (0.5, "breach")], start=1
            )
        ],
    )
    ctx.audit(actor="immune", action="breach", pipeline="web", outcome="halted", detail="x")
    ctx.audit(actor="U0OTHER", action="deploy", pipeline="api", outcome="accepted")
    say(ctx, COMPLETE, ts="1800000600.000001")
    text = incidents.export_markdown(ctx, incident.id)
    assert text.startswith(f"# Incident {incident.id}: error_rate breach on web")
    for heading in ("## Timeline", "## Samples of error_rate (4)", "## Five whys", "## Root cause"):
        assert heading in text
    assert "`breach` → halted" in text and "`five_whys.answer`" in text
    assert "api" not in text.split("## Timeline")[1].split("##")[0], "only this pipeline"
    assert "poll 3: 0.5 (**breach**)" in text and "no data (warmup)" in text
    assert "3. the key was renamed in the same release" in text
    assert "<https://ci.example.com/job/42>" in text


def test_export_of_a_long_incident_fits_one_slack_message(ctx: Context) -> None:
    samples = [
        KpiSample(at=START - 3000 + i, slot=i, kpi="error_rate", value=0.01, verdict="ok")
        for i in range(1, 1998)
    ] + [
        KpiSample(at=START - 3 + i, slot=1998 + i, kpi="error_rate", value=0.7, verdict="breach")
        for i in range(3)
    ]
    incident = open_incident(ctx, samples=samples, query="q" * 500)
    for n in range(300):
        ctx.audit(actor="U0DEV1", action="deploy", pipeline="web", detail=f"{n} " + "d" * 200)
    long_answers = "\n".join(f"why {n}: " + "because " * 400 for n in range(1, 6))
    say(ctx, long_answers + "\nroot cause: " + "cause " * 500, ts="1800000600.000001")
    say(ctx, "test: <https://ci.example.com/job/1>", ts="1800000600.000002")

    text = incidents.export_markdown(ctx, incident.id)
    assert len(text) <= EXPORT_LIMIT
    assert "2000 samples left out; the breach: 0.7, 0.7" in text
    assert "earlier entries left out" in text
    assert "`five_whys.answer`" in text, "the newest timeline entries are kept"
    assert "## Root cause\ncause cause" in text and "…" in text
    assert "<https://ci.example.com/job/1>" in text
