"""Incidents as use cases: storing them, confirming a rollback, resuming, exporting."""

from __future__ import annotations

from collections.abc import Callable

from bot import metrics
from bot.domain.errors import ImmuneError, NotFound, NothingToRollBackTo
from bot.domain.incidents import Incident
from bot.domain.models import Rollout, RolloutKind, RolloutStatus
from bot.domain.text import Channel, User, say
from bot.reports.incident_export import render_markdown
from bot.services.context import Context
from bot.services.deploys import start_rollout
from bot.services.pinning import image_that_ran
from bot.services.policy import check_deployer
from bot.services.requests import CommandRequest, Reply
from bot.store.keys import Once
from bot.store.store import Store

EXPORT_LIMIT = 3900  # an ephemeral reply's text stays well inside Slack's 4,000 characters


# Storage ---------------------------------------------------------------------------------


def create_incident(store: Store, incident: Incident) -> None:
    store.create_incident(incident)


def load_incident(store: Store, incident_id: str) -> Incident:
    incident = store.incident(incident_id)
    if incident is None:
        raise NotFound(say("There is no incident `{}`.", incident_id))
    return incident


def update_incident(store: Store, incident_id: str, change: Callable[[Incident], None]) -> Incident:
    """Apply `change` atomically (WATCH/MULTI), like rollouts."""
    updated = store.update_incident(incident_id, change)
    if updated is None:
        raise NotFound(say("There is no incident `{}`.", incident_id))
    return updated


def incident_for_thread(store: Store, channel: str, thread_ts: str) -> str | None:
    return store.incident_for_thread(channel, thread_ts)


def record_alert(store: Store, incident_id: str, alert_ts: str) -> Incident:
    """The breach alert was posted: its thread is where the five whys are answered."""

    def posted(incident: Incident) -> None:
        incident.alert_ts = alert_ts
        incident.thread_ts = alert_ts

    incident = update_incident(store, incident_id, posted)
    # Answers typed in the alert's thread find their incident by the thread.
    store.link_incident_thread(incident.channel, alert_ts, incident.id)
    return incident


# The analysis and /resume ------------------------------------------------------------------


def missing_analysis(ctx: Context, incident_id: str) -> list[str]:
    """What /resume still waits for: `why 1` … `why 5`, `root cause`, `failing test`."""
    return load_incident(ctx.store, incident_id).missing()


def record_resume(ctx: Context, incident_id: str, user: str, force_reason: str) -> None:
    """The pipeline re-opened: note who did it, and sum the analysis up in the thread."""
    now = ctx.clock.now()

    def resumed(incident: Incident) -> None:
        incident.resumed_by = user
        incident.resumed_at = now
        incident.force_reason = force_reason

    incident = update_incident(ctx.store, incident_id, resumed)
    ctx.notifier.incident_resumed(incident)


def confirm_rollback(ctx: Context, incident_id: str, user: str, request_id: str) -> Reply:
    """Someone pressed rollback_confirm on a breach alert (auto_rollback: false)."""
    incident = load_incident(ctx.store, incident_id)
    pipeline = ctx.pipeline(incident.pipeline)
    if incident.rollback_rollout_id:
        # The same answer as a press that lost the race below: one rollback, already under way.
        return Reply(
            say(
                "{} already confirmed the rollback of `{}` to `{}` ({}).",
                User(incident.rollback_confirmed_by or "immune"),
                incident.pipeline,
                incident.restored_version or "",
                incident.rollback_rollout_id,
            )
        )
    if not incident.restored_version:
        raise NothingToRollBackTo(
            say(
                "`{}` had no last good version when incident {} opened.",
                incident.pipeline,
                incident.id,
            ),
            hint=say("Name one: `/rollback {} <version>`.", incident.pipeline),
        )
    restored = incident.restored_version
    request = CommandRequest(
        command="/rollback",
        text=f"{incident.pipeline} {restored}",
        user_id=user,
        channel_id=incident.channel,
        request_id=request_id,
    )
    check_deployer(ctx, incident.pipeline, pipeline, request)
    # One rollback per incident, however many people press (or Slack redelivers the press).
    if not ctx.store.claim_once(Once.rollback_confirm, incident.id, holder=user):
        holder = ctx.store.once_holder(Once.rollback_confirm, incident.id)
        return Reply(
            say(
                "{} already confirmed the rollback of `{}` to `{}`.",
                User(holder) if holder else "someone",
                incident.pipeline,
                restored,
            )
        )
    try:
        rollout = start_rollout(
            ctx,
            incident.pipeline,
            pipeline,
            image_that_ran(ctx.store, incident.pipeline, pipeline, restored),
            kind=RolloutKind.rollback,
            actor=user,
            reason=f"incident {incident.id}",
            command=request.typed,
        )
    except ImmuneError:
        # Nothing started: the next press may try again.
        ctx.store.release_once(Once.rollback_confirm, incident.id)
        raise
    now = ctx.clock.now()

    def confirmed(i: Incident) -> None:
        i.rollback_rollout_id = rollout.id
        i.rollback_confirmed_by = user
        i.rollback_confirmed_at = now

    incident = update_incident(ctx.store, incident.id, confirmed)

    def rolled_back(r: Rollout) -> None:
        if r.status is RolloutStatus.live:
            r.status = RolloutStatus.rolled_back
            r.finished_at = now

    ctx.runner.change(incident.rollout_id, rolled_back)
    metrics.ROLLBACKS.labels(pipeline=incident.pipeline, trigger="confirmed").inc()
    ctx.audit(
        actor=user,
        action="rollback.confirm",
        pipeline=incident.pipeline,
        outcome="accepted",
        rollout=rollout.id,
        detail=f"incident {incident.id}: back to {restored}",
    )
    ctx.notifier.rollback_confirmed(incident, user, rollout.id)
    return Reply(
        say(
            "Rolling `{}` back to `{}` ({}); progress in {}.",
            incident.pipeline,
            restored,
            rollout.id,
            Channel(pipeline.channel),
        )
    )


# Post-mortem export ------------------------------------------------------------------------


def export_markdown(ctx: Context, incident_id: str) -> str:
    """The incident as Markdown for a post-mortem, sized for one ephemeral Slack reply.

    The timeline is the pipeline's audit stream from the bad rollout's request until the
    resume. When everything does not fit, samples are thinned first (the breaching run is
    kept), then the oldest timeline entries, then long answers are shortened.
    """
    incident = load_incident(ctx.store, incident_id)
    rollout = ctx.store.rollout(incident.rollout_id)
    since = rollout.created_at if rollout is not None else incident.opened_at - 3600
    until = incident.resumed_at
    entries = [
        entry
        for entry in reversed(
            ctx.store.audit_entries(pipeline=incident.pipeline, limit=500, since=since - 1)
        )
        if until is None or entry.at <= until + 1
    ]
    zone = ctx.config.zone
    for sample_limit, entry_limit, answer_limit in (
        (None, None, None),
        (30, None, None),
        (12, 40, None),
        (6, 25, 600),
        (4, 15, 300),
        (0, 8, 150),
    ):
        text = render_markdown(
            incident,
            entries,
            zone,
            sample_limit=sample_limit,
            entry_limit=entry_limit,
            answer_limit=answer_limit,
        )
        if len(text) <= EXPORT_LIMIT:
            return text
    return text[: EXPORT_LIMIT - 40].rstrip() + "\n\n_(cut to fit one Slack message)_"
