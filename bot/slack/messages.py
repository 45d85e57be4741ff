"""Message builders: pure functions from domain objects to Slack text and Block Kit.

Blocks are built with slack_sdk.models.blocks, which validates Slack's length limits.
"""

from __future__ import annotations

from collections.abc import Sequence

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    MarkdownTextObject,
    SectionBlock,
)

from bot.domain.config import Pipeline
from bot.domain.images import short_digest, split_reference
from bot.domain.models import (
    AuditEntry,
    PipelineState,
    Provenance,
    Rollout,
    RolloutKind,
    RolloutStatus,
    StepStatus,
)
from bot.domain.text import shorten
from bot.domain.traffic import watch_seconds
from bot.ports import LiveVersion
from bot.slack.ids import ActionId, BlockId
from bot.slack.render import channel_link, escape, link, mention, mrkdwn, slack_date

SECTION_TEXT_LIMIT = 3000

STATUS_EMOJI = {
    RolloutStatus.awaiting_approval: ":hourglass:",
    RolloutStatus.queued: ":hourglass_flowing_sand:",
    RolloutStatus.in_flight: ":arrows_counterclockwise:",
    RolloutStatus.live: ":eyes:",
    RolloutStatus.good: ":white_check_mark:",
    RolloutStatus.failed: ":x:",
    RolloutStatus.rolled_back: ":rewind:",
    RolloutStatus.superseded: ":fast_forward:",
    RolloutStatus.rejected: ":no_entry:",
    RolloutStatus.expired: ":alarm_clock:",
    RolloutStatus.cancelled: ":octagonal_sign:",
}
STEP_EMOJI = {
    StepStatus.running: ":arrows_counterclockwise:",
    StepStatus.done: ":white_check_mark:",
    StepStatus.failed: ":x:",
    StepStatus.skipped: ":heavy_minus_sign:",
}
STATUS_WORDS = {
    RolloutStatus.awaiting_approval: "awaiting approval",
    RolloutStatus.queued: "queued",
    RolloutStatus.in_flight: "in flight",
    RolloutStatus.live: "live, watching KPIs",
    RolloutStatus.good: "live and good",
    RolloutStatus.failed: "failed",
    RolloutStatus.rolled_back: "rolled back",
    RolloutStatus.superseded: "superseded",
    RolloutStatus.rejected: "rejected",
    RolloutStatus.expired: "expired",
    RolloutStatus.cancelled: "cancelled",
}


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def rollout_title(rollout: Rollout) -> str:
    verb = {
        RolloutKind.deploy: "Deploy",
        RolloutKind.rollback: "Rollback",
        RolloutKind.auto_rollback: "Automatic rollback",
    }[rollout.kind]
    origin = f" (from `{rollout.from_version}`)" if rollout.from_version else ""
    return f"{verb} of `{rollout.pipeline}` to `{rollout.version}`{origin}"


def image_words(rollout: Rollout) -> str:
    """`repo:1.4.2` · digest `sha256:…` for a pinned tag; the reference as it is otherwise."""
    if rollout.image_tag and rollout.image_digest:
        repository, _ = split_reference(rollout.reference)
        return f"`{repository}:{rollout.image_tag}` · digest `{short_digest(rollout.image_digest)}`"
    return f"`{rollout.reference}`"


def commit_words(provenance: Provenance | None) -> str:
    """`commit <link|abc1234>` from the image's OCI labels; "" when it carries no revision."""
    if provenance is None or not provenance.revision:
        return ""
    url = provenance.commit_url()
    short = provenance.short_revision
    return f"commit {link(url, short)}" if url else f"commit `{escape(short)}`"


def provenance_line(provenance: Provenance | None) -> str | None:
    """:label: commit, source and build time, as the image's labels say."""
    if provenance is None:
        return None
    parts = [commit_words(provenance)]
    repo = provenance.repo
    if repo is not None:
        parts.append(f"from {link(repo.url, repo.url.removeprefix('https://'))}")
    elif provenance.source:
        parts.append(f"from {escape(provenance.source)}")
    if provenance.created:
        parts.append(f"built {escape(provenance.created)}")
    words = " ".join(part for part in parts if part)
    return f":label: {words}" if words else None


def rollout_text(rollout: Rollout) -> str:
    """The plain-text fallback (notifications, screen readers)."""
    return f"{rollout_title(rollout)}: {STATUS_WORDS[rollout.status]}"


def traffic_line(rollout: Rollout) -> str | None:
    """Where the rollout's requests go behind the proxy: `5% to 2 · 95% to 1 (step 1 of 3)`."""
    split = rollout.traffic
    if split is None:
        return None
    line = f":twisted_rightwards_arrows: traffic: {split.weights().get(split.port, 100)}% to `{rollout.version}` (port {split.port})"
    if split.baseline_port is not None and not split.baseline_retired:
        line += (
            f" · {100 - split.percent}% to `{split.baseline_version}` (port {split.baseline_port})"
        )
    if split.steps > 1:
        line += f" · canary step {split.step + 1} of {split.steps}"
    elif split.baseline_retired and split.baseline_version:
        line += f" · `{split.baseline_version}` drained and stopped"
    return line


def build_rollout_message(rollout: Rollout) -> list[Block]:
    """The one channel message a rollout has, re-rendered at every step."""
    status = (
        f"{STATUS_EMOJI[rollout.status]} *{rollout_title(rollout)}*: {STATUS_WORDS[rollout.status]}"
    )
    who = (
        f"requested by {mention(rollout.requested_by)}"
        if rollout.requested_by != "immune"
        else "by immune"
    )
    lines = [
        status,
        f"{who} {slack_date(rollout.created_at)} · {image_words(rollout)} · {rollout.id}",
    ]
    if (provenance := provenance_line(rollout.provenance)) is not None:
        lines.append(provenance)
    if rollout.forced:
        lines.append(f":warning: forced outside the deploy window: {rollout.reason}")
    traffic = traffic_line(rollout)
    if traffic is not None:
        lines.append(traffic)
    approved = [a for a in rollout.approvals if a.decision == "approved"]
    if approved and rollout.status is not RolloutStatus.awaiting_approval:
        lines.append(
            "approved by " + ", ".join(f"{mention(a.user)} {slack_date(a.at)}" for a in approved)
        )
    steps = [
        f"{STEP_EMOJI[step.status]} {step.name}"
        + (f" ({_seconds(step.seconds)})" if step.seconds is not None else "")
        + (f": {step.detail}" if step.detail else "")
        for step in rollout.steps
    ]
    blocks: list[Block] = [
        SectionBlock(
            text=MarkdownTextObject(text=shorten("\n".join(lines), SECTION_TEXT_LIMIT, keep="end"))
        )
    ]
    if steps:
        blocks.append(
            SectionBlock(
                text=MarkdownTextObject(
                    text=shorten("\n".join(steps), SECTION_TEXT_LIMIT, keep="end")
                )
            )
        )
    facts = []
    if rollout.swap_gap_seconds is not None:
        facts.append(f"swap gap (old stopped → new healthy): {_seconds(rollout.swap_gap_seconds)}")
    if rollout.live_at is not None:
        facts.append(f"live after {_seconds(rollout.live_at - rollout.created_at)}")
    facts.extend(rollout.notes)
    facts.extend(escape(text) for _, text in sorted(rollout.judgements.items()))
    if facts:
        blocks.append(
            ContextBlock(
                elements=[MarkdownTextObject(text=shorten(" · ".join(facts), 2000, keep="end"))]
            )
        )
    if rollout.error:
        error = f":x: *Why:* {mrkdwn(rollout.why())}"
        if rollout.logs_tail:
            error += "\n```" + shorten(rollout.logs_tail, 2500, keep="end") + "```"
        blocks.append(
            SectionBlock(
                text=MarkdownTextObject(text=shorten(error, SECTION_TEXT_LIMIT, keep="end"))
            )
        )
    return blocks


def status_text(
    name: str,
    pipeline: Pipeline,
    state: PipelineState,
    inflight: Rollout | None,
    watching: Rollout | None,
    engine: LiveVersion | None,
) -> str:
    head = f"*{name}* ({pipeline.target}, `{pipeline.image}`, {channel_link(pipeline.channel)}): "
    if state.halted:
        head += (
            f":octagonal_sign: *halted* by {mention(state.halted_by)} {slack_date(state.halted_at or 0)}: "
            f"{state.halted_reason or 'no reason given'}"
        )
        if state.halted_incident:
            head += f" (incident {state.halted_incident})"
    else:
        head += ":large_green_circle: open"
    lines = [head]
    lines.append(
        f"live: `{state.live_version or '(none)'}` · last good: `{state.last_good_version or '(none)'}`"
    )
    if engine is not None and engine.version != state.live_version:
        lines.append(f":warning: the engine runs `{engine.version or '(unlabelled)'}`")
    elif engine is None and state.live_version and inflight is None:
        lines.append(":warning: the engine runs no container of this pipeline")
    if inflight is not None:
        lines.append(
            f"in flight: {inflight.kind.value} of `{inflight.version}` by {mention(inflight.requested_by)}, "
            f"{STATUS_WORDS[inflight.status]} ({inflight.id})"
        )
    if watching is not None and watching.status is RolloutStatus.live and pipeline.kpis:
        ends = (watching.live_at or watching.created_at) + watch_seconds(pipeline, watching)
        lines.append(
            f"watching `{watching.version}`: {len(pipeline.kpis)} KPI(s) every "
            f"{pipeline.watch.interval:g}s until {slack_date(ends, '{time_secs}')}"
        )
    if watching is not None and (traffic := traffic_line(watching)) is not None:
        lines.append(traffic)
    return "\n".join(lines)


def history_text(name: str, rollouts: list[Rollout], audit: list[AuditEntry]) -> str:
    lines = [f"*History of {name}* (newest first)"]
    if not rollouts:
        lines.append("No rollouts yet.")
    for rollout in rollouts:
        took = ""
        if rollout.finished_at or rollout.live_at:
            took = f" in {_seconds((rollout.live_at or rollout.finished_at or 0) - rollout.created_at)}"
        lines.append(
            f"{STATUS_EMOJI[rollout.status]} {slack_date(rollout.created_at)} {rollout.kind.value} "
            f"`{rollout.version}` by {mention(rollout.requested_by)}: {STATUS_WORDS[rollout.status]}{took}"
            + (f" ({mrkdwn(rollout.why())})" if rollout.error else "")
            + (f" · {commit}" if (commit := commit_words(rollout.provenance)) else "")
            + f" · {rollout.id}"
        )
    if audit:
        lines.append("\n*Audit* (newest first)")
        for entry in audit:
            who = "immune" if entry.actor == "immune" else f"{mention(entry.actor)}"
            lines.append(
                f"{slack_date(entry.at)} {who} {entry.action}: {entry.outcome}"
                + (f" ({entry.detail})" if entry.detail else "")
                + (" · `" + entry.command.replace("`", "'") + "`" if entry.command else "")
            )
    return shorten("\n".join(lines), 3900, keep="end")


def code_block(markdown: str) -> str:
    """Markdown in a code block, so Slack shows it as written and it copies cleanly."""
    return "```\n" + markdown.replace("```", "'''") + "\n```"


def canary_held_text(rollout: Rollout, waiting: Sequence[str], policy: str) -> str:
    step = ""
    if rollout.traffic is not None:
        step = f" at {rollout.traffic.percent}% (step {rollout.traffic.step + 1} of {rollout.traffic.steps})"
    if not waiting:
        return f"Canary of `{rollout.pipeline}` to `{rollout.version}`{step}: decided, no longer waiting"
    return (
        f"Canary of `{rollout.pipeline}` to `{rollout.version}` is holding{step}: not enough data "
        f"to judge {', '.join(f'`{k}`' for k in waiting)}"
    )


def build_canary_held(
    rollout: Rollout, waiting: Sequence[str], decides_at: float, policy: str
) -> list[Block]:
    """The question a held canary step asks the channel (deployers answer)."""
    lines = [f":hourglass_flowing_sand: *{canary_held_text(rollout, waiting, policy)}*"]
    if not waiting:
        return [SectionBlock(text=MarkdownTextObject(text=lines[0]))]
    lines.append(
        f"Low traffic gives too few samples for a verdict. Promote to the next step, or abort "
        f"(all traffic back to `{rollout.traffic.baseline_version if rollout.traffic else ''}`)"
        f". If nobody answers, `{policy}` {slack_date(decides_at, '{time_secs}')}."
    )
    return [
        SectionBlock(text=MarkdownTextObject(text=shorten("\n".join(lines), SECTION_TEXT_LIMIT))),
        ActionsBlock(
            block_id=BlockId.canary_actions.value,
            elements=[
                ButtonElement(
                    text="Promote",
                    action_id=ActionId.canary_promote.value,
                    value=rollout.id,
                    style="primary",
                ),
                ButtonElement(
                    text="Abort",
                    action_id=ActionId.canary_abort.value,
                    value=rollout.id,
                    style="danger",
                ),
            ],
        ),
    ]
