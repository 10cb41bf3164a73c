"""The one test clock: a time source the test sets and moves by hand, handed to the code
under test (``Admitter(clock=...)``, ``create_app(clock=...)``) instead of ``time.time``."""

from __future__ import annotations

import time
from dataclasses import dataclass

T0 = 1_800_000_000.0  # 2027-01-15, a fixed start so tests never depend on the wall clock


@dataclass
class Clock:
    """Reads ``now`` (seconds since the epoch); ``advance`` moves it forward."""

    now: float = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    @classmethod
    def wall(cls) -> Clock:
        """Starting at the real now: for code that also compares with real time."""
        return cls(time.time())

    @classmethod
    def past(cls, hours: float = 30.0) -> Clock:
        """Starting ``hours`` ago on a whole hour, so the buckets it fills are really closed."""
        start = time.time() - hours * 3600
        return cls(start - start % 3600)
