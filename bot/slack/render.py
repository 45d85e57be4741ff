"""mrkdwn: how Slack shows the domain's Text, people, channels and times.

The one place that writes `<@U…>`, `<#C…>` and `<!date^…>`; every message builder uses it.
"""

from __future__ import annotations

from collections.abc import Iterable

from bot.domain.text import Channel, Channels, Moment, Reference, Text, User, Users, utc

DATE_TOKEN = "{date_short_pretty} {time_secs}"


def slack_date(epoch: float, token: str = DATE_TOKEN) -> str:
    """A time each reader sees in their own time zone, with a UTC fallback."""
    return f"<!date^{int(epoch)}^{token}|{utc(epoch)}>"


def mention(user: str) -> str:
    """A user; "immune" (the bot's own actor name) stays a word."""
    return "immune" if user == "immune" else f"<@{user}>"


def mentions(users: Iterable[str]) -> str:
    return ", ".join(mention(user) for user in users)


def channel_link(channel: str) -> str:
    return f"<#{channel}>"


def escape(text: str) -> str:
    """Plain text made safe for mrkdwn (Slack's three control characters)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def link(url: str, label: str) -> str:
    """`<url|label>`; a URL with mrkdwn's control characters (from an image label, say) is
    shown as text rather than trusted as a link."""
    if any(c in url for c in "<>| \n") or not url.startswith(("https://", "http://")):
        return escape(label)
    return f"<{url.replace('&', '&amp;')}|{escape(label)}>"


def reference(part: Reference) -> str:
    if isinstance(part, User):
        return mention(part.id)
    if isinstance(part, Users):
        return mentions(part.ids)
    if isinstance(part, Channel):
        return channel_link(part.id)
    if isinstance(part, Channels):
        return ", ".join(channel_link(channel) for channel in part.ids)
    assert isinstance(part, Moment)
    return slack_date(part.epoch)


def mrkdwn(text: Text) -> str:
    """A Text as Slack shows it."""
    return text.render(reference)
