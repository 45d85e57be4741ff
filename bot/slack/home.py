"""The App Home tab: Block Kit for a HomeReport, and publishing it (`views.publish`).

A tab is published when its person opens it, and again by `refresh_homes` (a scheduler job)
for everyone who opened theirs recently, only when the view would differ from what they were
last shown: the view's fingerprint is swapped in Redis first, so of several replicas
refreshing at once one publishes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    SectionBlock,
)
from slack_sdk.models.views import View

from bot.domain.incidents import ANALYSIS_FIELDS
from bot.domain.text import shorten
from bot.services import home
from bot.services.context import Context
from bot.services.home import HomePipeline, HomeReport
from bot.slack.ids import ActionId, BlockId
from bot.slack.link import SlackLink, SlackState
from bot.slack.messages import (
    SECTION_TEXT_LIMIT,
    STATUS_WORDS,
    commit_words,
    image_words,
    traffic_line,
)
from bot.slack.render import channel_link, escape, mention, mentions, slack_date

logger = logging.getLogger(__name__)

# Slack allows 100 blocks in a Home view; a pipeline takes at most three (divider, status,
# incident), the page four more (header, summary, paging).
PIPELINES_PER_PAGE = 30
VIEW_BLOCK_LIMIT = 100
# views.publish is a Tier 4 method (100+ calls a minute); the refresh stays below 90.
PUBLISHES_PER_MINUTE = 90


def page_count(report: HomeReport) -> int:
    return max(1, math.ceil(len(report.pipelines) / PIPELINES_PER_PAGE))


def build_home_view(report: HomeReport) -> View:
    pages = page_count(report)
    page = min(report.page, pages - 1)
    blocks: list[Block] = [HeaderBlock(text="Pipelines")]
    if not report.pipelines:
        blocks.append(SectionBlock(text=MarkdownTextObject(text=_nothing_to_see(report))))
        return View(type="home", blocks=blocks)
    shown = report.pipelines[page * PIPELINES_PER_PAGE : (page + 1) * PIPELINES_PER_PAGE]
    halted = sum(1 for p in report.pipelines if p.state.halted)
    inflight = sum(1 for p in report.pipelines if p.inflight is not None)
    incidents = sum(1 for p in report.pipelines if p.incident is not None)
    summary = (
        f"{len(report.pipelines)} pipeline(s): {halted} halted · {inflight} rollout(s) in flight"
        f" · {incidents} open incident(s)"
    )
    if pages > 1:
        first = page * PIPELINES_PER_PAGE + 1
        summary += f" · page {page + 1} of {pages} (pipelines {first} to {first + len(shown) - 1})"
    blocks.append(ContextBlock(elements=[MarkdownTextObject(text=summary)]))
    for item in shown:
        blocks.append(DividerBlock())
        blocks.extend(pipeline_blocks(item))
    if pages > 1:
        buttons = []
        if page > 0:
            buttons.append(
                ButtonElement(
                    text="Previous", action_id=ActionId.home_previous, value=str(page - 1)
                )
            )
        if page < pages - 1:
            buttons.append(
                ButtonElement(text="Next", action_id=ActionId.home_next, value=str(page + 1))
            )
        blocks.append(ActionsBlock(block_id=BlockId.home_pages, elements=buttons))
    assert len(blocks) <= VIEW_BLOCK_LIMIT
    return View(type="home", blocks=blocks)


def _nothing_to_see(report: HomeReport) -> str:
    if report.configured == 0:
        return "No pipeline is configured yet: the bot's operators add them to the pipelines file."
    return (
        f"You may see none of the {report.configured} pipeline(s) here: each lists its `viewers`, "
        "and you are not among them (nor a deployer or approver). "
        + (
            f"Ask {mentions(report.admins[:3])} to add you."
            if report.admins
            else "Ask the bot's operators to add you to `viewers` in the pipelines file."
        )
    )


def pipeline_blocks(item: HomePipeline) -> list[Block]:
    state, pipeline = item.state, item.pipeline
    head = f"*{escape(item.name)}* (`{pipeline.image}`, {channel_link(pipeline.channel)}): "
    if state.halted:
        head += (
            f":octagonal_sign: *halted* by {mention(state.halted_by)} "
            f"{slack_date(state.halted_at or 0)}: {escape(state.halted_reason or 'no reason given')}"
        )
    else:
        head += ":large_green_circle: open"
    lines = [head]
    live = f"live: `{state.live_version or '(none)'}`"
    if item.live is not None and item.live.version == state.live_version:
        if item.live.reference != item.live.version:
            live += f" ({image_words(item.live)})"  # the tag and the digest it was pinned to
        if item.live.live_at is not None:
            live += f" since {slack_date(item.live.live_at)}"
        commit = commit_words(item.live.provenance)
        if commit:
            live += f", {commit}"
    lines.append(f"{live} · last good: `{state.last_good_version or '(none)'}`")
    if item.inflight is not None:
        rollout = item.inflight
        line = (
            f":arrows_counterclockwise: in flight: {rollout.kind.value} of `{rollout.version}` by "
            f"{mention(rollout.requested_by)}, {STATUS_WORDS[rollout.status]}"
        )
        if rollout.steps:
            step = rollout.steps[-1]
            line += f" · step {len(rollout.steps)}: {step.name} ({step.status.value})"
        lines.append(line)
        traffic = traffic_line(rollout)
        if traffic is not None:
            lines.append(traffic)
    if item.queue:
        waiting = ", ".join(f"`{e.version}` by {mention(e.requested_by)}" for e in item.queue)
        frozen = " (frozen while halted)" if state.halted else ""
        lines.append(f":hourglass_flowing_sand: queue{frozen}: {waiting}")
    blocks: list[Block] = [
        SectionBlock(
            text=MarkdownTextObject(text=shorten("\n".join(lines), SECTION_TEXT_LIMIT, keep="end"))
        )
    ]
    incident = item.incident
    if incident is not None:
        missing = incident.missing()
        analysis = (
            "analysis complete: `/resume` re-opens the pipeline"
            if not missing
            else f"analysis {len(ANALYSIS_FIELDS) - len(missing)}/{len(ANALYSIS_FIELDS)}, "
            f"missing: {', '.join(missing)}"
        )
        blocks.append(
            SectionBlock(
                text=MarkdownTextObject(
                    text=shorten(
                        f":rotating_light: incident {incident.id}: `{escape(incident.kpi)}` "
                        f"breached on `{incident.bad_version}` {slack_date(incident.opened_at)}"
                        f" · {analysis}",
                        SECTION_TEXT_LIMIT,
                    )
                ),
                accessory=ButtonElement(
                    text="Five whys", action_id=ActionId.five_whys_open, value=incident.id
                ),
            )
        )
    return blocks


def fingerprint(view: View) -> str:
    return hashlib.sha256(
        json.dumps(view.to_dict(), sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def publish(ctx: Context, client: WebClient, report: HomeReport, *, force: bool) -> bool:
    """Publish `report` unless the person's tab already shows it (`force`: publish anyway,
    as Slack asks when they open the tab). True when published."""
    view = build_home_view(report)
    mark = fingerprint(view)
    if not home.claim_publish(ctx, report.user, mark) and not force:
        return False
    try:
        client.views_publish(user_id=report.user, view=view)
    except SlackApiError as error:
        home.publish_failed(ctx, report.user)
        logger.warning(
            "could not publish the Home tab of %s: %s", report.user, error.response.get("error")
        )
        raise
    return True


def open_home(ctx: Context, client: WebClient, user: str) -> None:
    """`app_home_opened`: remember the person, and show them where things stand."""
    home.record_opened(ctx, user)
    publish(ctx, client, home.report_for(ctx, user, home.gather(ctx)), force=True)


def turn_page(ctx: Context, client: WebClient, user: str, page: int) -> None:
    home.choose_page(ctx, user, page)
    publish(ctx, client, home.report_for(ctx, user, home.gather(ctx)), force=True)


def refresh_homes(
    ctx: Context, client: WebClient, interval_seconds: float, link: SlackLink | None = None
) -> int:
    """The scheduler job: republish the tabs of recent viewers whose view changed, at most
    what Slack's rate limit allows for one interval. Returns how many were published.

    Skipped while the outbox finds Slack failing (`link`): a publish per viewer would only
    fail and log, every interval; the next refresh after Slack works again catches up.
    """
    if link is not None and link.state is not SlackState.ok:
        return 0
    viewers = home.recent_viewers(ctx)
    if not viewers:
        return 0
    budget = max(1, int(PUBLISHES_PER_MINUTE * interval_seconds / 60))
    everything = home.gather(ctx)
    published = 0
    for user in viewers:
        if published >= budget:
            break  # the rest wait for the next refresh, their fingerprints untouched
        try:
            if publish(ctx, client, home.report_for(ctx, user, everything), force=False):
                published += 1
        except SlackApiError as error:
            if error.response.get("error") == "ratelimited":
                break
    return published
