"""How the domain tells people things, without knowing it is Slack."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from bot.config import Approvals
from bot.models import Rollout

if TYPE_CHECKING:
    from bot.incidents import Incident


class NotifierBusy(Exception):
    """The chat service asked to slow down (rate limited); try again after `retry_after` s."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited; retry after {retry_after:g}s")
        self.retry_after = retry_after


class Notifier(Protocol):
    def rollout_changed(self, rollout: Rollout) -> str | None:
        """Post the rollout's progress message, or update it in place; returns its ts.

        Raises NotifierBusy instead of waiting when rate limited: a rollout (a rollback above
        all) must never wait for a chat service's back-off.
        """
        ...

    def approval_changed(
        self, rollout: Rollout, policy: Approvals, expires_at: float
    ) -> str | None:
        """Post the rollout's approval request, or update it in place; returns its ts."""
        ...

    def tell_requester(self, response_url: str | None, text: str) -> None:
        """An ephemeral answer to whoever asked (through Slack's response_url)."""
        ...

    def post(self, channel: str, text: str, *, thread_ts: str | None = None) -> str | None:
        """A plain message in a channel or thread; returns its ts."""
        ...

    def incident_opened(self, incident: Incident) -> str | None:
        """The breach alert and its five-whys thread; returns the alert's ts."""
        ...

    def incident_chart(self, incident: Incident) -> None:
        """The KPI's chart, uploaded into the alert's thread."""
        ...

    def incident_changed(self, incident: Incident, note: str) -> None:
        """A reply in the incident's thread (what is still missing, or the summary)."""
        ...


class SilentNotifier:
    """Tells nobody: for tools and tests that look only at state."""

    def rollout_changed(self, rollout: Rollout) -> str | None:
        return rollout.message_ts

    def approval_changed(
        self, rollout: Rollout, policy: Approvals, expires_at: float
    ) -> str | None:
        return rollout.approval_ts

    def tell_requester(self, response_url: str | None, text: str) -> None:
        return None

    def post(self, channel: str, text: str, *, thread_ts: str | None = None) -> str | None:
        return None

    def incident_opened(self, incident: Incident) -> str | None:
        return None

    def incident_chart(self, incident: Incident) -> None:
        return None

    def incident_changed(self, incident: Incident, note: str) -> None:
        return None
