"""Deploy windows: local days and hours in the config's time zone (zoneinfo handles DST)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from bot.domain.config import Window

# Windows repeat weekly; two weeks of local days always reach the next opening.
_SEARCH_DAYS = 15


@dataclass(frozen=True)
class WindowVerdict:
    open: bool
    next_open: float | None  # epoch seconds of the next opening, when closed


def wall_clock_instant(day: date, wall: time, zone: ZoneInfo) -> float:
    """Epoch seconds when the clocks of `zone` first show `wall` on `day`.

    A time repeated when clocks go back is its first occurrence. A time skipped when they go
    forward (01:30 on a spring-forward night in London) is never shown, so the answer is the
    moment the clocks jump past it: a window opening at 01:30 opens when 01:00 becomes 02:00.
    """
    first = datetime.combine(day, wall, tzinfo=zone)  # fold=0: the offset before a change
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == first.replace(tzinfo=None):
        return first.timestamp()
    # Skipped: the jump lies between the two readings of `wall`; find it to the second.
    after = int(first.timestamp())
    before = int(first.replace(fold=1).timestamp())
    offset_after = datetime.fromtimestamp(after, zone).utcoffset()
    while after - before > 1:
        middle = (before + after) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == offset_after:
            after = middle
        else:
            before = middle
    return float(after)


def _bounds(window: Window, day: date, zone: ZoneInfo) -> tuple[float, float] | None:
    """The window's start and end on the local date `day`, as epoch seconds."""
    if day.weekday() not in window.day_numbers():
        return None
    start_time, end_time = window.time_range()
    start = wall_clock_instant(day, start_time, zone)
    if end_time is None:
        end = wall_clock_instant(day + timedelta(days=1), time(0, 0), zone)
    else:
        end = wall_clock_instant(day, end_time, zone)
    return start, end


def check(windows: list[Window], zone: ZoneInfo, now: float) -> WindowVerdict:
    """Is `now` inside any window, and if not, when does the next one open?

    A window runs from the instant the local clocks first show its start to the instant they
    first show its end (see `wall_clock_instant` for the skipped and repeated hours of DST).
    """
    today = datetime.fromtimestamp(now, tz=zone).date()
    next_open: float | None = None
    for offset in range(-1, _SEARCH_DAYS):
        day = today + timedelta(days=offset)
        for window in windows:
            bounds = _bounds(window, day, zone)
            if bounds is None:
                continue
            start_ts, end_ts = bounds
            if start_ts >= end_ts:
                continue  # every minute of it was skipped when the clocks went forward
            if start_ts <= now < end_ts:
                return WindowVerdict(True, None)
            if start_ts > now and (next_open is None or start_ts < next_open):
                next_open = start_ts
        if next_open is not None and offset >= 1:
            break
    return WindowVerdict(False, next_open)


def describe(windows: list[Window], timezone: str) -> str:
    return "; ".join(f"{w.days} {w.hours}" for w in windows) + f" {timezone}"
