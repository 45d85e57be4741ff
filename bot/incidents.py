"""Incidents: a KPI breach, what the bot did about it, and the analysis people write."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, cast

from pydantic import BaseModel, Field

from bot import metrics
from bot.errors import ImmuneError, NotFound, NothingToRollBackTo
from bot.images import resolve_version
from bot.models import AuditEntry, Rollout, RolloutKind, RolloutStatus
from bot.state import Store

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from bot.commands import Reply
    from bot.context import Context

WHYS = (1, 2, 3, 4, 5)
ROOT_CAUSE = "root cause"
FAILING_TEST = "failing test"
# The analysis /resume waits for, in the order people are asked for it.
ANALYSIS_FIELDS = (*(f"why {n}" for n in WHYS), ROOT_CAUSE, FAILING_TEST)

EXPORT_LIMIT = 3900  # an ephemeral reply's text stays well inside Slack's 4,000 characters


class KpiSample(BaseModel):
    """One poll of one KPI during a watch."""

    at: float
    slot: int
    kpi: str
    value: float | None  # None: no data (error, empty result, NaN)
    verdict: str  # ok | breach | no_data | warmup | ignored
    detail: str = ""

    @property
    def breaching(self) -> bool:
        return self.verdict in ("breach", "no_data")


class Incident(BaseModel):
    id: str
    pipeline: str
    channel: str
    rollout_id: str
    bad_version: str
    restored_version: str | None = None
    rollback_rollout_id: str | None = None
    kpi: str
    query: str
    tolerance: str
    kpi_max: float | None = None
    kpi_min: float | None = None
    for_polls: int = 1
    auto_rollback: bool = True
    samples: list[KpiSample] = Field(default_factory=list)
    # The KPI from before the deploy until the breach (a Prometheus range query), for the chart.
    history: list[tuple[float, float]] = Field(default_factory=list)
    opened_at: float
    live_at: float | None = None
    actions: list[str] = Field(default_factory=list)
    alert_ts: str | None = None
    thread_ts: str | None = None
    whys: dict[int, str] = Field(default_factory=dict)
    root_cause: str = ""
    failing_test: str = ""
    # Who gave each answer (field -> user), and where it came from (field -> message ts, or
    # "modal"), so an edited thread message replaces exactly what it had answered.
    answered_by: dict[str, str] = Field(default_factory=dict)
    answer_sources: dict[str, str] = Field(default_factory=dict)
    rollback_confirmed_by: str = ""
    rollback_confirmed_at: float | None = None
    resumed_by: str = ""
    resumed_at: float | None = None
    force_reason: str = ""

    def answer(self, field: str) -> str:
        """The recorded answer to one of ANALYSIS_FIELDS ("" when missing)."""
        if field == ROOT_CAUSE:
            return self.root_cause
        if field == FAILING_TEST:
            return self.failing_test
        return self.whys.get(_why_number(field), "")

    def set_answer(self, field: str, value: str, *, user: str, source: str) -> None:
        """Record (or, with an empty value, clear) one answer."""
        if field == ROOT_CAUSE:
            self.root_cause = value
        elif field == FAILING_TEST:
            self.failing_test = value
        elif value:
            self.whys[_why_number(field)] = value
        else:
            self.whys.pop(_why_number(field), None)
        if value:
            self.answered_by[field] = user
            self.answer_sources[field] = source
        else:
            self.answered_by.pop(field, None)
            self.answer_sources.pop(field, None)

    def missing(self) -> list[str]:
        return [field for field in ANALYSIS_FIELDS if not self.answer(field).strip()]

    @property
    def awaiting_rollback(self) -> bool:
        """Auto-rollback is off and nobody has confirmed the rollback yet."""
        return (
            not self.auto_rollback
            and self.rollback_rollout_id is None
            and self.restored_version is not None
        )

    def breaching_samples(self) -> list[KpiSample]:
        """The polls that made the breach: the last run of breaching samples."""
        run: list[KpiSample] = []
        for sample in self.samples:
            run = [*run, sample] if sample.breaching else ([] if sample.verdict == "ok" else run)
        return run


def _why_number(field: str) -> int:
    number = int(field.removeprefix("why "))
    if number not in WHYS:
        raise ValueError(f"no such why: {field!r}")
    return number


# Storage ---------------------------------------------------------------------------------


def create_incident(store: Store, incident: Incident) -> None:
    pipe = store.redis.pipeline()
    pipe.set(store.keys.incident(incident.id), incident.model_dump_json())
    pipe.zadd(store.keys.pipeline_incidents(incident.pipeline), {incident.id: incident.opened_at})
    pipe.execute()


def load_incident(store: Store, incident_id: str) -> Incident:
    raw = cast(str | None, store.redis.get(store.keys.incident(incident_id)))
    if raw is None:
        raise NotFound(f"There is no incident `{incident_id}`.")
    return Incident.model_validate_json(raw)


def update_incident(store: Store, incident_id: str, change: Callable[[Incident], None]) -> Incident:
    """Apply `change` atomically (WATCH/MULTI), like rollouts."""
    updated = store.update_model(store.keys.incident(incident_id), Incident, change)
    if updated is None:
        raise NotFound(f"There is no incident `{incident_id}`.")
    return updated


def link_thread(store: Store, incident: Incident) -> None:
    """Remember which thread answers belong to which incident."""
    if incident.thread_ts:
        store.redis.set(
            store.keys.incident_by_thread(incident.channel, incident.thread_ts), incident.id
        )


def incident_for_thread(store: Store, channel: str, thread_ts: str) -> str | None:
    return cast(str | None, store.redis.get(store.keys.incident_by_thread(channel, thread_ts)))


def record_alert(store: Store, incident_id: str, alert_ts: str) -> Incident:
    """The breach alert was posted: its thread is where the five whys are answered."""

    def posted(incident: Incident) -> None:
        incident.alert_ts = alert_ts
        incident.thread_ts = alert_ts

    incident = update_incident(store, incident_id, posted)
    link_thread(store, incident)
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
    from bot import incident_messages

    ctx.notifier.incident_changed(incident, incident_messages.resume_summary(incident))


def confirm_rollback(ctx: Context, incident_id: str, user: str, request_id: str) -> Reply:
    """Someone pressed rollback_confirm on a breach alert (auto_rollback: false)."""
    # bot.commands reaches most of the bot; imported here, it cannot make an import cycle.
    from bot.commands import CommandRequest, Reply, check_deployer, start_rollout

    incident = load_incident(ctx.store, incident_id)
    pipeline = ctx.pipeline(incident.pipeline)
    if incident.rollback_rollout_id:
        # The same answer as a press that lost the race below: one rollback, already under way.
        who = f"<@{incident.rollback_confirmed_by}>" if incident.rollback_confirmed_by else "immune"
        return Reply(
            f"{who} already confirmed the rollback of `{incident.pipeline}` to "
            f"`{incident.restored_version}` ({incident.rollback_rollout_id})."
        )
    if not incident.restored_version:
        raise NothingToRollBackTo(
            f"`{incident.pipeline}` had no last good version when incident {incident.id} opened.",
            hint=f"Name one: `/rollback {incident.pipeline} <version>`.",
        )
    request = CommandRequest(
        command="/rollback",
        text=f"{incident.pipeline} {incident.restored_version}",
        user_id=user,
        channel_id=incident.channel,
        request_id=request_id,
    )
    check_deployer(ctx, incident.pipeline, pipeline, request)
    # One rollback per incident, however many people press (or Slack redelivers the press).
    claim = ctx.store.keys.seen("rollback-confirm", incident.id)
    if not ctx.store.redis.set(claim, user, nx=True, ex=7 * 86400):
        holder = cast(str | None, ctx.store.redis.get(claim)) or "someone"
        return Reply(
            f"<@{holder}> already confirmed the rollback of `{incident.pipeline}` "
            f"to `{incident.restored_version}`."
        )
    try:
        rollout = start_rollout(
            ctx,
            incident.pipeline,
            pipeline,
            resolve_version(pipeline.image, incident.restored_version),
            kind=RolloutKind.rollback,
            actor=user,
            reason=f"incident {incident.id}",
            command=request.typed,
        )
    except ImmuneError:
        ctx.store.redis.delete(claim)  # nothing started: the next press may try again
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
        detail=f"incident {incident.id}: back to {incident.restored_version}",
    )
    ctx.notifier.incident_changed(
        incident,
        f":rewind: <@{user}> confirmed the rollback: `{incident.pipeline}` goes back to "
        f"`{incident.restored_version}` ({rollout.id}).",
    )
    return Reply(
        f"Rolling `{incident.pipeline}` back to `{incident.restored_version}` ({rollout.id}); "
        f"progress in <#{pipeline.channel}>."
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


def render_markdown(
    incident: Incident,
    entries: list[AuditEntry],
    zone: ZoneInfo,
    *,
    sample_limit: int | None = None,
    entry_limit: int | None = None,
    answer_limit: int | None = None,
) -> str:
    """The Markdown text of an incident (pure); limits thin samples, timeline and answers."""

    def when(epoch: float | None) -> str:
        if epoch is None:
            return "-"
        return datetime.fromtimestamp(epoch, zone).strftime("%Y-%m-%d %H:%M:%S %Z")

    def cut(text: str) -> str:
        text = " ".join(text.split())
        if answer_limit is None or len(text) <= answer_limit:
            return text
        return text[: answer_limit - 1] + "…"

    lines = [
        f"# Incident {incident.id}: {incident.kpi} breach on {incident.pipeline}",
        "",
        f"- **KPI:** `{incident.kpi}`; tolerance `{incident.tolerance}`, "
        f"{incident.for_polls} poll(s) in a row",
        f"- **Query:** `{incident.query}`",
        f"- **Bad version:** `{incident.bad_version}` ({incident.rollout_id}), "
        f"live at {when(incident.live_at)}",
        f"- **Restored version:** `{incident.restored_version or '(none)'}`"
        + (f" ({incident.rollback_rollout_id})" if incident.rollback_rollout_id else ""),
        f"- **Opened:** {when(incident.opened_at)}",
    ]
    if incident.resumed_at is not None:
        forced = f", forced: {incident.force_reason}" if incident.force_reason else ""
        lines.append(
            f"- **Resumed:** {when(incident.resumed_at)} by <@{incident.resumed_by}>{forced}"
        )
    else:
        lines.append(f"- **Pipeline:** halted until `/resume {incident.pipeline}`")

    lines += ["", "## Timeline"]
    shown_entries = entries
    if entry_limit is not None and len(entries) > entry_limit:
        shown_entries = entries[-entry_limit:]
        lines.append(f"- … {len(entries) - entry_limit} earlier entries left out")
    for entry in shown_entries:
        who = "immune" if entry.actor == "immune" else f"<@{entry.actor}>"
        outcome = f" → {entry.outcome}" if entry.outcome else ""
        detail = f": {cut(entry.detail)}" if entry.detail else ""
        lines.append(f"- {when(entry.at)} {who} `{entry.action}`{outcome}{detail}")
    if not entries:
        lines.append("- (no audit entries)")

    lines += ["", f"## Samples of {incident.kpi} ({len(incident.samples)})"]
    lines += _sample_lines(incident, sample_limit, when)

    lines += ["", "## Five whys"]
    for n in WHYS:
        answer = incident.whys.get(n, "")
        lines.append(f"{n}. {cut(answer) if answer else '_(missing)_'}")
    lines += ["", "## Root cause", cut(incident.root_cause) or "_(missing)_"]
    lines += [
        "",
        "## Failing test",
        f"<{incident.failing_test}>" if incident.failing_test else "_(missing)_",
    ]
    return "\n".join(lines)


def _sample_lines(
    incident: Incident, limit: int | None, when: Callable[[float | None], str]
) -> list[str]:
    samples = incident.samples
    if not samples:
        return ["- (no samples recorded)"]
    if limit is not None and len(samples) > limit:
        if limit == 0:
            breaching = incident.breaching_samples()
            return [
                f"- {len(samples)} samples left out; the breach: "
                + ", ".join(_value(s) for s in breaching[-incident.for_polls :])
            ]
        # Keep the end of the watch (the breaching run and what led to it).
        kept = samples[-limit:]
        lines = [f"- … {len(samples) - limit} earlier samples left out"]
    else:
        kept, lines = samples, []
    for sample in kept:
        verdict = f"**{sample.verdict}**" if sample.breaching else sample.verdict
        lines.append(f"- {when(sample.at)} poll {sample.slot}: {_value(sample)} ({verdict})")
    return lines


def _value(sample: KpiSample) -> str:
    return "no data" if sample.value is None else f"{sample.value:.4g}"
