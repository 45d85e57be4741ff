"""Words for people, with the references a chat service shows its own way.

The use cases write what they have to say as a `Text`: a template with `{}` slots and the
values for them. A value is plain text, or a reference a person reads differently on each
surface: a user, a channel, a moment. The Slack layer turns a Text into mrkdwn (`<@U1>`,
`<#C1>`, `<!date^…>`); the plain rendering (logs, Markdown exports, Redis) uses ids and UTC.
So no Slack markup is ever stored or written outside `bot/slack`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class User:
    id: str


@dataclass(frozen=True)
class Users:
    """Several people, shown as a comma-separated list."""

    ids: tuple[str, ...]

    @classmethod
    def of(cls, ids: Iterable[str]) -> Users:
        return cls(tuple(ids))


@dataclass(frozen=True)
class Channel:
    id: str


@dataclass(frozen=True)
class Channels:
    ids: tuple[str, ...]

    @classmethod
    def of(cls, ids: Iterable[str]) -> Channels:
        return cls(tuple(ids))


@dataclass(frozen=True)
class Moment:
    """A point in time, which each reader may see in their own time zone."""

    epoch: float


Reference = User | Users | Channel | Channels | Moment
Part = str | Reference
_KINDS: dict[str, type[Reference]] = {
    "user": User,
    "users": Users,
    "channel": Channel,
    "channels": Channels,
    "moment": Moment,
}


@dataclass(frozen=True)
class Text:
    """A template (`str.format` slots, `{}`) and its parts; immutable, joinable with `+`."""

    template: str
    parts: tuple[Part, ...] = ()

    def render(self, reference: Callable[[Reference], str]) -> str:
        return self.template.format(
            *(part if isinstance(part, str) else reference(part) for part in self.parts)
        )

    def plain(self) -> str:
        """For logs, Redis and Markdown exports: user and channel ids, UTC times."""
        return self.render(plain_reference)

    def __add__(self, other: Text | str) -> Text:
        other = as_text(other)
        return Text(self.template + other.template, self.parts + other.parts)

    def __radd__(self, other: str) -> Text:
        return as_text(other) + self

    def __bool__(self) -> bool:
        return bool(self.template)

    def to_json(self) -> str:
        parts: list[object] = []
        for part in self.parts:
            if isinstance(part, str):
                parts.append(part)
            else:
                kind = next(name for name, cls in _KINDS.items() if isinstance(part, cls))
                parts.append(
                    {kind: list(part.ids) if isinstance(part, Users | Channels) else _value(part)}
                )
        return json.dumps({"template": self.template, "parts": parts})

    @classmethod
    def from_json(cls, raw: str) -> Text:
        data = json.loads(raw)
        parts: list[Part] = []
        for part in data["parts"]:
            if isinstance(part, str):
                parts.append(part)
                continue
            ((kind, value),) = part.items()
            ref = _KINDS[kind]
            if ref is Users or ref is Channels:
                parts.append(ref(tuple(value)))
            else:
                parts.append(ref(value))
        return cls(data["template"], tuple(parts))


def _value(reference: User | Channel | Moment) -> str | float:
    return reference.epoch if isinstance(reference, Moment) else reference.id


def say(template: str, *parts: Part) -> Text:
    """`say("{} halted {}", User(u), name)`: every value goes in a slot, never in the template."""
    return Text(template, parts)


def as_text(value: Text | str) -> Text:
    """A literal string as a Text (its braces are text, not slots)."""
    if isinstance(value, Text):
        return value
    return Text(value.replace("{", "{{").replace("}", "}}"))


def join(texts: Iterable[Text | str], separator: str = "\n") -> Text:
    result = Text("")
    for index, text in enumerate(texts):
        result = result + (as_text(separator) if index else Text("")) + as_text(text)
    return result


def utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def plain_reference(reference: Reference) -> str:
    if isinstance(reference, User):
        return reference.id
    if isinstance(reference, Users):
        return ", ".join(reference.ids)
    if isinstance(reference, Channel):
        return f"#{reference.id}"
    if isinstance(reference, Channels):
        return ", ".join(f"#{channel}" for channel in reference.ids)
    return utc(reference.epoch)


def shorten(text: str, limit: int, *, keep: str = "start") -> str:
    """`text` within `limit` characters, an ellipsis marking what was cut.

    keep="start" keeps the beginning (answers, details); keep="end" keeps the end (log tails,
    where the last lines say why something died).
    """
    if len(text) <= limit:
        return text
    if keep == "end":
        return "…" + text[-(limit - 1) :]
    return text[: limit - 1] + "…"
