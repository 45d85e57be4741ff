"""Actions listeners."""

from __future__ import annotations

from slack_bolt import App


def register(app: App) -> None:
    """Listeners arrive with the features that need them."""
