"""A request from a person (a slash command, a button press) and the answer they get.

Answers are domain `Text`: the chat layer shows the people and times in them its own way.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

from bot.domain.errors import Duplicate, ImmuneError
from bot.domain.parsing import USAGE
from bot.domain.text import Text, as_text, say
from bot.services.context import Context
from bot.store.keys import Once
from bot.store.store import AuditRecord, PipelineSnapshot

# The refusals audited while answer_once handles a request on this thread: written with its
# answer, in one round trip, instead of one each.
_refusals: ContextVar[list[AuditRecord] | None] = ContextVar("refusals", default=None)
# The state of the pipeline the request names, read with its claim in the same round trip;
# handed out once, to the handler's first read of it.
_read_with_claim: ContextVar[PipelineSnapshot | None] = ContextVar("read_with_claim", default=None)


@dataclass(frozen=True)
class CommandRequest:
    """A slash command as the domain sees it."""

    command: str
    text: str
    user_id: str
    channel_id: str
    response_url: str | None = None
    request_id: str | None = None  # Slack's trigger_id: the same on a retried delivery

    @property
    def typed(self) -> str:
        return f"{self.command} {self.text}".strip()

    @property
    def action(self) -> str:
        """The command's name in the audit trail: `deploy` for `/deploy`."""
        return self.command.lstrip("/")


@dataclass(frozen=True)
class Reply:
    """What the person who asked is told, privately."""

    text: Text


def help_reply(command: str) -> Reply:
    return Reply(as_text(USAGE[command]))


def audit_refusal(ctx: Context, **fields: str) -> None:
    """Audit a refusal; the caller raises the error that explains it, right after.

    Inside answer_once the entry is written with the request's recorded answer (atomically, in
    the same round trip); elsewhere at once.
    """
    pending = _refusals.get()
    if pending is None:
        ctx.audit(outcome="refused", **fields)
        return
    pending.append(
        ctx.store.audit_record(
            outcome="refused", max_age_days=ctx.limits.audit_max_age_days, **fields
        )
    )


def pipeline_snapshot(ctx: Context, name: str) -> PipelineSnapshot:
    """The pipeline's state with its rollouts: the one read with this request's claim when it
    names `name` and nothing read it yet, else read now."""
    read = _read_with_claim.get()
    if read is not None and read.state.name == name:
        _read_with_claim.set(None)  # a later read in the same request sees what changed since
        return read
    return ctx.store.pipeline_snapshot(name)


def answer_once(
    ctx: Context,
    kind: Once,
    request_id: str | None,
    what: str,
    handle: Callable[[], Reply],
    *,
    reads: str | None = None,
) -> Reply:
    """Handle a request once across every replica (Slack redelivers, people double-click).

    The first delivery claims the request id (SET NX); a redelivery gets the first answer
    again, or, while the first is still being handled, says so. The answer is kept, refusals
    included, so a retry never runs the checks (and the audit) a second time. A refusal's
    audit entry is written with the answer, before it: one round trip for both. `reads`
    names the pipeline whose state `handle` reads first (with `pipeline_snapshot`): it is
    read with the claim, in the same round trip.
    """
    if not request_id:
        return handle()
    read: PipelineSnapshot | None = None
    if reads is None:
        first = ctx.store.claim_once(kind, request_id)
        earlier = None if first else ctx.store.first_answer(kind, request_id)
    else:
        claim = ctx.store.claim_once_reading(kind, request_id, reads)
        first, earlier, read = claim.first, claim.earlier_answer, claim.snapshot
    if not first:
        if earlier is None:
            raise Duplicate(say("Already received {}; it is being handled once.", what))
        raise Duplicate(
            say("Already answered {} (it arrived again); the answer was:\n", what)
            + Text.from_json(earlier)
        )
    refusals: list[AuditRecord] = []
    token = _refusals.set(refusals)
    read_token = _read_with_claim.set(read)
    try:
        reply = handle()
    except ImmuneError as exc:
        ctx.store.record_answer(kind, request_id, exc.text().to_json(), audit=refusals)
        raise
    except Exception:
        # Nothing was answered: a redelivery may try again (the pipeline lock still holds).
        # What was refused before the failure is audited, as it would have been at once.
        for record in refusals:
            ctx.store.append_audit(record)
        ctx.store.release_once(kind, request_id)
        raise
    finally:
        _refusals.reset(token)
        _read_with_claim.reset(read_token)
    ctx.store.record_answer(kind, request_id, reply.text.to_json(), audit=refusals)
    return reply
