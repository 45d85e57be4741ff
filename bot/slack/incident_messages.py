"""Message builders for incidents: the breach alert, its five-whys thread and modal.

Pure functions from an Incident to Slack text, Block Kit (slack_sdk.models.blocks, which
validates Slack's limits) and the modal view. Answers are kept as plain text and escaped here.
"""

from __future__ import annotations

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    HeaderBlock,
    InputBlock,
    MarkdownTextObject,
    PlainTextInputElement,
    SectionBlock,
)
from slack_sdk.models.views import View

from bot.domain.images import short_revision
from bot.domain.incidents import (
    ANALYSIS_FIELDS,
    FAILING_TEST,
    ROOT_CAUSE,
    AnalysisChange,
    Incident,
    KpiSample,
)
from bot.domain.models import commit_range
from bot.domain.text import shorten
from bot.slack.ids import ActionId, BlockId, CallbackId, InputActionId
from bot.slack.messages import SECTION_TEXT_LIMIT
from bot.slack.render import escape, link, mention, slack_date

MAX_SAMPLES_LISTED = 10
ANSWER_MAX_LENGTH = 3000  # Slack's limit for a plain_text_input


def _value(sample: KpiSample) -> str:
    return "no data" if sample.value is None else f"{sample.value:.4g}"


def _field_label(field: str) -> str:
    return field[0].upper() + field[1:]


def analysis_field_block_id(field: str) -> str:
    """The modal input block of one of ANALYSIS_FIELDS."""
    if field == ROOT_CAUSE:
        return BlockId.five_whys_root_cause.value
    if field == FAILING_TEST:
        return BlockId.five_whys_test.value
    return BlockId.five_whys_why.value.format(n=field.removeprefix("why "))


# The breach alert --------------------------------------------------------------------------


def alert_text(incident: Incident) -> str:
    """The alert's plain-text fallback (notifications, screen readers)."""
    return (
        f"KPI breach on {incident.pipeline}: {incident.kpi} beyond {incident.tolerance} "
        f"after {incident.bad_version} went live; pipeline halted (incident {incident.id})"
    )


def what_the_bot_did(incident: Incident) -> list[str]:
    """Lines with times: the deploy, the detection, the halt and the rollback."""
    lines = []
    if incident.live_at is not None:
        lines.append(
            f"{slack_date(incident.live_at)} `{incident.bad_version}` went live "
            f"({incident.rollout_id}); the watch began"
        )
    lines.append(
        f"{slack_date(incident.opened_at)} breach detected: {incident.for_polls} poll(s) in a "
        "row beyond tolerance"
    )
    lines += [f"{slack_date(incident.opened_at)} {action}" for action in incident.actions]
    if incident.rollback_confirmed_at is not None:
        lines.append(
            f"{slack_date(incident.rollback_confirmed_at)} {mention(incident.rollback_confirmed_by)} "
            f"confirmed the rollback to `{incident.restored_version}` "
            f"({incident.rollback_rollout_id})"
        )
    if incident.resumed_at is not None:
        forced = f" (forced: {escape(incident.force_reason)})" if incident.force_reason else ""
        lines.append(
            f"{slack_date(incident.resumed_at)} {mention(incident.resumed_by)} resumed "
            f"`{incident.pipeline}`{forced}"
        )
    return lines


def build_breach_alert(incident: Incident) -> list[Block]:
    """The top-level alert in the pipeline's channel; re-rendered as the incident changes."""
    restored = (
        f"`{incident.restored_version}`"
        if incident.restored_version
        else "none (no last good version)"
    )
    halted = (
        f"`{incident.pipeline}` was halted, and resumed {slack_date(incident.resumed_at)}."
        if incident.resumed_at is not None
        else f"`{incident.pipeline}` is halted until the five whys are answered."
    )
    summary = (
        f"`{incident.kpi}` went beyond its tolerance for {incident.for_polls} poll(s) in a row "
        f"after `{incident.bad_version}` went live on `{incident.pipeline}`. {halted} "
        f"Incident `{incident.id}`."
    )
    if incident.judgement:
        summary += f"\n*Judged against the baseline:* {escape(incident.judgement)}"
    if (commits := commit_range_words(incident)) is not None:
        summary += f"\n*Commits:* {commits}"
    breached = incident.breaching_samples()[-MAX_SAMPLES_LISTED:]
    samples = (
        "\n".join(f"• {slack_date(s.at)}: `{_value(s)}` (poll {s.slot})" for s in breached)
        if breached
        else "none recorded"
    )
    did = "\n".join(f"• {line}" for line in what_the_bot_did(incident))
    missing = incident.missing()
    analysis = (
        ":white_check_mark: Five whys, root cause and failing test recorded."
        if not missing
        else f":memo: Analysis {len(ANALYSIS_FIELDS) - len(missing)}/{len(ANALYSIS_FIELDS)} "
        f"recorded; missing: {', '.join(missing)}. Answer in the thread or with *Five whys*."
    )
    blocks: list[Block] = [
        HeaderBlock(
            text=shorten(f":rotating_light: KPI breach on {incident.pipeline}: {incident.kpi}", 150)
        ),
        SectionBlock(
            text=MarkdownTextObject(text=shorten(summary, SECTION_TEXT_LIMIT)),
            fields=[
                MarkdownTextObject(text=f"*KPI*\n`{shorten(incident.kpi, 200)}`"),
                MarkdownTextObject(
                    text=f"*Tolerance*\n`{escape(incident.tolerance)}`, "
                    f"{incident.for_polls} poll(s) in a row"
                ),
                MarkdownTextObject(
                    text=f"*Bad version*\n`{incident.bad_version}` ({incident.rollout_id})"
                ),
                MarkdownTextObject(text=f"*Restored version*\n{restored}"),
            ],
        ),
        SectionBlock(
            text=MarkdownTextObject(
                text=shorten(f"*Samples that breached*\n{samples}", SECTION_TEXT_LIMIT)
            )
        ),
        SectionBlock(
            text=MarkdownTextObject(text=shorten(f"*What immune did*\n{did}", SECTION_TEXT_LIMIT))
        ),
        ContextBlock(
            elements=[MarkdownTextObject(text=shorten(f"Query: `{escape(incident.query)}`", 2000))]
        ),
        ContextBlock(elements=[MarkdownTextObject(text=analysis)]),
    ]
    buttons = [
        ButtonElement(
            text="Five whys",
            action_id=ActionId.five_whys_open.value,
            value=incident.id,
            style="primary",
        )
    ]
    if incident.awaiting_rollback:
        buttons.append(
            ButtonElement(
                text=shorten(f"Roll back to {incident.restored_version}", 75),
                action_id=ActionId.rollback_confirm.value,
                value=incident.id,
                style="danger",
                confirm=ConfirmObject(
                    title="Roll back?",
                    text=f"Roll `{incident.pipeline}` back from `{incident.bad_version}` "
                    f"to `{incident.restored_version}`?",
                    confirm="Roll back",
                    deny="Not yet",
                    style="danger",
                ),
            )
        )
    blocks.append(ActionsBlock(block_id=BlockId.breach_actions.value, elements=buttons))
    return blocks


# The chart ---------------------------------------------------------------------------------


def chart_title(incident: Incident) -> str:
    return f"{incident.kpi} on {incident.pipeline} around the deploy of {incident.bad_version}"


def chart_filename(incident: Incident) -> str:
    return f"{incident.id}-{incident.kpi}.png"


# The five-whys thread ----------------------------------------------------------------------


def thread_template(incident: Incident) -> str:
    """The thread's first reply: what to answer, and how."""
    return "\n".join(
        [
            f":memo: *Five whys for incident `{incident.id}`* "
            f"(`/resume {incident.pipeline}` waits for them).",
            "Answer in this thread, one answer per line: `why 1: …`, `root cause: …`, "
            "`test: <link>`; or press *Five whys* on the alert. "
            "Editing your message replaces its answers.",
            f">*Why 1:* why did `{incident.kpi}` breach after `{incident.bad_version}` went live?",
            ">*Why 2:* why did that happen?",
            ">*Why 3:* and why that?",
            ">*Why 4:* and why that?",
            ">*Why 5:* and why that?",
            ">*Root cause:* what to fix so it cannot happen again",
            ">*Failing test:* a link to a test that fails on "
            f"`{incident.bad_version}` and passes with the fix",
        ]
    )


def analysis_status(incident: Incident, change: AnalysisChange) -> str:
    """The bot's reply in the thread after answers (or malformed ones) arrived."""
    lines = []
    if change.recorded:
        lines.append(f"Recorded {', '.join(change.recorded)} from {mention(change.user)}.")
    if change.removed:
        lines.append(f"{mention(change.user)}'s edit removed {', '.join(change.removed)}.")
    lines += [f":warning: {problem}" for problem in change.problems]
    missing = incident.missing()
    if missing:
        lines.append(f"Still missing: {', '.join(missing)}.")
    elif incident.resumed_at is None:
        lines.append(
            ":white_check_mark: The five whys, root cause and failing test are recorded: "
            f"`/resume {incident.pipeline}` will re-open the pipeline."
        )
    else:
        lines.append(":white_check_mark: The analysis is complete.")
    return "\n".join(lines)


def analysis_quote(incident: Incident) -> list[str]:
    lines = []
    for field in ANALYSIS_FIELDS:
        answer = incident.answer(field)
        if field == FAILING_TEST and answer:
            shown = f"<{answer}>"
        else:
            shown = escape(shorten(" ".join(answer.split()), 500)) if answer else "_(missing)_"
        lines.append(f">*{_field_label(field)}:* {shown}")
    return lines


def commit_range_words(incident: Incident) -> str | None:
    """The commits between the last good version and the bad one, with a compare link where
    the source is a GitHub or GitLab URL; None unless both images carry revision and source."""
    commits = commit_range(incident.good_provenance, incident.bad_provenance)
    if commits is None:
        return None
    good, bad = short_revision(commits.good), short_revision(commits.bad)
    words = (
        f"`{escape(good)}` (`{incident.restored_version or 'last good'}`) to "
        f"`{escape(bad)}` (`{incident.bad_version}`)"
    )
    if commits.compare_url:
        words += f": {link(commits.compare_url, 'compare')}"
    return words


def resume_summary(incident: Incident) -> str:
    """Posted in the thread when the pipeline re-opens."""
    forced = f" (forced: {escape(incident.force_reason)})" if incident.force_reason else ""
    head = (
        f":large_green_circle: `{incident.pipeline}` resumed by {mention(incident.resumed_by)} "
        f"{slack_date(incident.resumed_at or incident.opened_at)}{forced}. Summary of incident "
        f"`{incident.id}`:"
    )
    return "\n".join([head, *analysis_quote(incident)])


# The five-whys modal -----------------------------------------------------------------------


def build_five_whys_modal(incident: Incident) -> View:
    """The form: one input per answer, pre-filled; `private_metadata` is the incident id."""
    intro = (
        f"*Incident `{incident.id}`*: `{escape(incident.kpi)}` beyond "
        f"`{escape(incident.tolerance)}` after `{incident.bad_version}` went live on "
        f"`{incident.pipeline}`. Each why asks why the answer before it happened."
    )
    blocks: list[Block] = [SectionBlock(text=MarkdownTextObject(text=intro))]
    for field in ANALYSIS_FIELDS:
        is_test = field == FAILING_TEST
        blocks.append(
            InputBlock(
                block_id=analysis_field_block_id(field),
                label=_field_label(field),
                optional=True,
                hint="A link (https://…) to a test that fails on the bad version."
                if is_test
                else None,
                element=PlainTextInputElement(
                    action_id=InputActionId.answer.value,
                    initial_value=incident.answer(field) or None,
                    multiline=not is_test,
                    max_length=ANSWER_MAX_LENGTH,
                    placeholder="https://ci.example.com/…" if is_test else None,
                ),
            )
        )
    return View(
        type="modal",
        callback_id=CallbackId.five_whys.value,
        private_metadata=incident.id,
        title="Five whys",
        submit="Save",
        close="Cancel",
        blocks=blocks,
    )
