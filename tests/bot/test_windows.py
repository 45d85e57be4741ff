"""Deploy windows in the config's time zone, across the days the clocks change.

Europe/London in 2025: clocks go forward on Sunday 30 March at 01:00 GMT (01:00 becomes 02:00
BST) and back on Sunday 26 October at 02:00 BST (02:00 becomes 01:00 GMT).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.domain.config import Window
from bot.domain.windows import check, describe, wall_clock_instant

LONDON = ZoneInfo("Europe/London")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def local(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> float:
    """Epoch seconds of a wall-clock time in London."""
    return datetime(year, month, day, hour, minute, second, tzinfo=LONDON).timestamp()


def windows(*specs: tuple[str, str]) -> list[Window]:
    return [Window(days=days, hours=hours) for days, hours in specs]


def test_open_inside_and_closed_outside_on_an_ordinary_day() -> None:
    office = windows(("mon-thu", "09:00-17:00"))
    assert check(office, LONDON, local(2025, 3, 27, 9, 0)).open  # Thursday
    assert check(office, LONDON, local(2025, 3, 27, 16, 59, 59)).open
    before = check(office, LONDON, local(2025, 3, 27, 8, 59, 59))
    assert not before.open and before.next_open == local(2025, 3, 27, 9, 0)
    after = check(office, LONDON, local(2025, 3, 27, 17, 0))
    assert not after.open


def test_next_opening_after_the_clocks_go_forward_is_at_local_nine() -> None:
    # Thursday 17:00 GMT; the next window is Monday 09:00, by then BST (08:00 UTC).
    verdict = check(windows(("mon-thu", "09:00-17:00")), LONDON, local(2025, 3, 27, 17, 0))
    assert verdict.next_open == utc(2025, 3, 31, 8, 0)
    assert verdict.next_open == local(2025, 3, 31, 9, 0)


def test_next_opening_after_the_clocks_go_back_is_at_local_nine() -> None:
    verdict = check(windows(("mon-thu", "09:00-17:00")), LONDON, local(2025, 10, 23, 17, 0))
    assert verdict.next_open == utc(2025, 10, 27, 9, 0)


def test_a_window_on_the_spring_forward_day_follows_local_time() -> None:
    sunday = windows(("sun", "09:00-17:00"))
    assert not check(sunday, LONDON, utc(2025, 3, 30, 7, 59, 59)).open
    assert check(sunday, LONDON, utc(2025, 3, 30, 8, 0)).open  # 09:00 BST
    assert check(sunday, LONDON, utc(2025, 3, 30, 15, 59, 59)).open
    assert not check(sunday, LONDON, utc(2025, 3, 30, 16, 0)).open  # 17:00 BST


def test_a_window_starting_in_the_skipped_hour_opens_when_the_clocks_jump() -> None:
    # 01:30 never shows on 30 March: at 01:00 GMT the clocks read 02:00 BST, inside 01:30-03:00.
    night = windows(("sun", "01:30-03:00"))
    just_before = check(night, LONDON, utc(2025, 3, 30, 0, 59, 59))
    assert not just_before.open
    assert just_before.next_open == utc(2025, 3, 30, 1, 0)
    assert check(night, LONDON, utc(2025, 3, 30, 1, 0)).open
    assert check(night, LONDON, utc(2025, 3, 30, 1, 59, 59)).open  # 02:59:59 BST
    assert not check(night, LONDON, utc(2025, 3, 30, 2, 0)).open  # 03:00 BST


def test_a_window_ending_in_the_skipped_hour_closes_when_the_clocks_jump() -> None:
    late = windows(("sun", "00:00-01:30"))
    assert check(late, LONDON, utc(2025, 3, 30, 0, 59, 59)).open
    assert not check(late, LONDON, utc(2025, 3, 30, 1, 0)).open


def test_a_window_inside_the_skipped_hour_never_opens_that_day() -> None:
    skipped = windows(("sun", "01:10-01:50"))
    verdict = check(skipped, LONDON, utc(2025, 3, 30, 0, 30))
    assert not verdict.open
    # Not the jump itself: the next time the clocks really show 01:10 on a Sunday.
    assert verdict.next_open == local(2025, 4, 6, 1, 10)
    assert not check(skipped, LONDON, utc(2025, 3, 30, 1, 0)).open


def test_a_window_over_the_repeated_hour_stays_open_through_both() -> None:
    # 26 October: 01:30 BST (00:30 UTC) ... 02:00 BST becomes 01:00 GMT ... 03:00 GMT.
    night = windows(("sun", "01:30-03:00"))
    assert not check(night, LONDON, utc(2025, 10, 26, 0, 29, 59)).open
    assert check(night, LONDON, utc(2025, 10, 26, 0, 30)).open  # first 01:30
    assert check(night, LONDON, utc(2025, 10, 26, 1, 15)).open  # 01:15 GMT, the second 01:15
    assert check(night, LONDON, utc(2025, 10, 26, 2, 59, 59)).open
    assert not check(night, LONDON, utc(2025, 10, 26, 3, 0)).open


def test_a_window_ending_in_the_repeated_hour_ends_at_its_first_occurrence() -> None:
    early = windows(("sun", "00:00-01:30"))
    assert check(early, LONDON, utc(2025, 10, 26, 0, 29, 59)).open
    assert not check(early, LONDON, utc(2025, 10, 26, 0, 30)).open
    assert not check(early, LONDON, utc(2025, 10, 26, 1, 15)).open  # 01:15 again: still shut


def test_a_working_day_on_the_fall_back_day_is_nine_hours_long_when_the_day_has_25() -> None:
    sunday = windows(("sun", "00:00-24:00"))
    start = wall_clock_instant(date(2025, 10, 26), time(0, 0), LONDON)
    end = wall_clock_instant(date(2025, 10, 27), time(0, 0), LONDON)
    assert end - start == 25 * 3600
    assert check(sunday, LONDON, end - 1).open and not check(sunday, LONDON, end).open


def test_midnight_end_and_days_that_wrap_round_the_week() -> None:
    weekend = windows(("fri-mon", "22:00-24:00"))
    assert check(weekend, LONDON, local(2025, 6, 2, 23, 59, 59)).open  # Monday
    assert not check(weekend, LONDON, local(2025, 6, 3, 0, 0)).open
    verdict = check(weekend, LONDON, local(2025, 6, 3, 12, 0))  # Tuesday
    assert verdict.next_open == local(2025, 6, 6, 22, 0)  # Friday


def test_the_earliest_of_several_windows_is_the_next_opening() -> None:
    both = windows(("mon-fri", "14:00-16:00"), ("mon-fri", "09:00-10:00"))
    verdict = check(both, LONDON, local(2025, 6, 2, 10, 30))
    assert verdict.next_open == local(2025, 6, 2, 14, 0)
    verdict = check(both, LONDON, local(2025, 6, 2, 16, 30))
    assert verdict.next_open == local(2025, 6, 3, 9, 0)


def test_a_half_hour_shift_is_handled_too() -> None:
    # Lord Howe Island moves its clocks by 30 minutes: 02:00 becomes 02:30 on 5 October 2025.
    zone = ZoneInfo("Australia/Lord_Howe")
    night = windows(("sun", "02:10-04:00"))
    jump = wall_clock_instant(date(2025, 10, 5), time(2, 10), zone)
    assert datetime.fromtimestamp(jump, zone).strftime("%H:%M:%S") == "02:30:00"
    assert not check(night, zone, jump - 1).open
    assert check(night, zone, jump).open


def test_describe_names_the_zone() -> None:
    assert describe(windows(("mon-thu", "09:00-17:00")), "Europe/London") == (
        "mon-thu 09:00-17:00 Europe/London"
    )


@pytest.mark.parametrize(
    ("wall", "expected"),
    [
        (time(0, 59, 59), "2025-03-30T00:59:59+00:00"),
        (time(1, 0), "2025-03-30T01:00:00+00:00"),  # skipped: the jump
        (time(1, 59, 59), "2025-03-30T01:00:00+00:00"),  # skipped: the jump
        (time(2, 0), "2025-03-30T01:00:00+00:00"),  # the first time the clocks show 02:00
        (time(2, 30), "2025-03-30T01:30:00+00:00"),
    ],
)
def test_wall_clock_instants_on_the_spring_forward_night(wall: time, expected: str) -> None:
    instant = wall_clock_instant(date(2025, 3, 30), wall, LONDON)
    assert datetime.fromtimestamp(instant, UTC).isoformat() == expected


# Properties, over a year of instants, a few zones and arbitrary windows --------------------

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ZONES = ["Europe/London", "America/New_York", "Australia/Lord_Howe", "UTC", "Asia/Kolkata"]


@st.composite
def window_specs(draw: st.DrawFn) -> Window:
    first, last = draw(st.sampled_from(DAYS)), draw(st.sampled_from(DAYS))
    start = draw(st.integers(0, 24 * 4 - 1)) * 15
    end = draw(st.integers(start // 15 + 1, 24 * 4)) * 15
    hours = f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"
    return Window(days=f"{first}-{last}", hours=hours)


instants = st.floats(min_value=utc(2025, 1, 1), max_value=utc(2026, 1, 1)).map(round)


@settings(max_examples=300, deadline=None)
@given(st.lists(window_specs(), min_size=1, max_size=3), instants, st.sampled_from(ZONES))
def test_next_open_is_exactly_when_a_window_opens(
    specs: list[Window], now: float, zone_name: str
) -> None:
    zone = ZoneInfo(zone_name)
    verdict = check(specs, zone, now)
    if verdict.open:
        assert verdict.next_open is None
        return
    assert verdict.next_open is not None and verdict.next_open > now
    assert check(specs, zone, verdict.next_open).open
    assert not check(specs, zone, verdict.next_open - 1).open
    assert verdict.next_open - now <= 8 * 86400


@settings(max_examples=300, deadline=None)
@given(st.lists(window_specs(), min_size=1, max_size=3), instants, st.sampled_from(ZONES))
def test_away_from_clock_changes_open_means_the_local_clock_is_inside(
    specs: list[Window], now: float, zone_name: str
) -> None:
    zone = ZoneInfo(zone_name)
    here = datetime.fromtimestamp(now, zone)
    day_before, day_after = (
        datetime.fromtimestamp(now + delta, zone).utcoffset() for delta in (-86400, 86400)
    )
    if not (day_before == here.utcoffset() == day_after):
        return  # the clocks change within a day: the cases above pin those down
    wall = here.time()

    def inside(window: Window) -> bool:
        start, end = window.time_range()
        return (
            here.weekday() in window.day_numbers() and start <= wall and (end is None or wall < end)
        )

    assert check(specs, zone, now).open == any(inside(window) for window in specs)


def test_search_reaches_a_weekly_window_from_any_day() -> None:
    once_a_week = windows(("wed", "10:00-10:15"))
    start = local(2025, 6, 4, 10, 15)  # a Wednesday, just after; the next is a week less 15m on
    verdict = check(once_a_week, LONDON, start)
    assert verdict.next_open is not None
    assert timedelta(seconds=verdict.next_open - start) == timedelta(days=6, hours=23, minutes=45)
