"""Deploy windows: local days and hours in the config's time zone (zoneinfo handles DST)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from bot.config import Window

# Windows repeat weekly; two weeks of local days always reach the next opening.
_SEARCH_DAYS = 15


@dataclass(frozen=True)
class WindowVerdict:
    open: bool
    next_open: float | None  # epoch seconds of the next opening, when closed


def _bounds(window: Window, day: datetime, zone: ZoneInfo) -> tuple[datetime, datetime] | None:
    """The window's local start and end on `day` (a local date), as aware datetimes."""
    if day.weekday() not in window.day_numbers():
        return None
    start_time, end_time = window.time_range()
    start = datetime.combine(day.date(), start_time, tzinfo=zone)
    if end_time is None:
        end = datetime.combine(day.date() + timedelta(days=1), datetime.min.time(), tzinfo=zone)
    else:
        end = datetime.combine(day.date(), end_time, tzinfo=zone)
    return start, end


def check(windows: list[Window], zone: ZoneInfo, now: float) -> WindowVerdict:
    """Is `now` inside any window, and if not, when does the next one open?

    Wall-clock times are compared as instants, so a window over a DST change lasts as long as
    the clocks say (09:00-17:00 is 8 hours of local time, whatever the offset does).
    """
    instant = datetime.fromtimestamp(now, tz=zone)
    today = instant.replace(hour=0, minute=0, second=0, microsecond=0)
    next_open: float | None = None
    for offset in range(-1, _SEARCH_DAYS):
        day = today + timedelta(days=offset)
        for window in windows:
            bounds = _bounds(window, day, zone)
            if bounds is None:
                continue
            start, end = bounds
            start_ts, end_ts = start.timestamp(), end.timestamp()
            if start_ts <= now < end_ts:
                return WindowVerdict(True, None)
            if start_ts > now and (next_open is None or start_ts < next_open):
                next_open = start_ts
        if next_open is not None and offset >= 1:
            break
    return WindowVerdict(False, next_open)


def describe(windows: list[Window], timezone: str) -> str:
    return "; ".join(f"{w.days} {w.hours}" for w in windows) + f" {timezone}"
