"""`python -m tests.support.skewed_bot`: the production bot, its clock off by a few seconds.

A replica whose host clock drifts is the fault under test (issue 15, clocks): the bot's only
time seam is the `Clock` it is built with, so this runs `bot.__main__.serve` with a clock that
is `IMMUNE_TEST_CLOCK_OFFSET` seconds ahead (or behind, when negative) of the system's.
Monotonic time is left alone: it never crosses a process.
"""

from __future__ import annotations

import os
import sys
import time

SKEW_ENV = "IMMUNE_TEST_CLOCK_OFFSET"


class OffsetClock:
    def __init__(self, offset: float) -> None:
        self.offset = offset

    def now(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic()


if __name__ == "__main__":
    from bot.__main__ import serve

    sys.exit(serve(clock=OffsetClock(float(os.environ[SKEW_ENV]))))
