"""Secret values and their redaction: what must never appear in Slack, exports or logs."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 4
"""Shorter values are not redacted: `1` or `on` would blank out every number and word."""

# Slack's tokens have a shape of their own: redacted even when the bot never held them
# (a user pasting one into a command, a library echoing a header).
SLACK_TOKEN = re.compile(r"\bx(?:ox[abposre]|app)-[A-Za-z0-9-]+")


def redact(text: str, values: Iterable[str]) -> str:
    """`text` with each secret value (and anything shaped like a Slack token) replaced."""
    return Redactor(values).redact(text)


class Redactor:
    """Redacts a growing set of secret values; safe to share between threads."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._values: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None
        self.add(values)

    def add(self, values: Iterable[str]) -> None:
        kept = {value for value in values if value and len(value) >= MIN_SECRET_LENGTH}
        with self._lock:
            if kept <= self._values:
                return
            self._values = self._values | kept
            # Longest first, so a secret that contains another is replaced whole.
            ordered = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(value) for value in ordered))

    def redact(self, text: str) -> str:
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(REDACTED, text)
        return SLACK_TOKEN.sub(REDACTED, text)
