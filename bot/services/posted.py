"""Recording the ts of a message Slack took after its sender had moved on.

While Slack fails, messages wait in the outbox and their senders go on; when one goes
through, its ts is written here, so the next change of that message updates it in place and
answers typed in an alert's thread find their incident.
"""

from __future__ import annotations

import logging

from bot.domain.models import Rollout
from bot.ports import Posted
from bot.services import incidents
from bot.store.store import Store

logger = logging.getLogger(__name__)


def record_posted(store: Store, posted: Posted) -> None:
    if posted.kind == "alert":
        incidents.record_alert(store, posted.id, posted.ts)
        return

    def keep(rollout: Rollout) -> None:
        if posted.kind == "rollout":
            rollout.message_ts = posted.ts
        elif posted.kind == "approval":
            rollout.approval_ts = posted.ts
        else:
            rollout.canary_prompt_ts = posted.ts

    try:
        store.update_rollout(posted.id, keep)
    except KeyError:
        logger.warning(
            "rollout %s is gone; its %s message %s stays unrecorded",
            posted.id,
            posted.kind,
            posted.ts,
        )
