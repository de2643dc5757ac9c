"""Clocks. Everything that decays, windows or expires asks a clock, never time.time().

A replay in simulated time therefore behaves exactly as live traffic would.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Current time in epoch seconds."""
        ...


class WallClock:
    def now(self) -> float:
        return time.time()


class SimulatedClock:
    """A clock that only moves when told to (replays, tests)."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def set(self, moment: float) -> None:
        self._now = float(moment)

    def advance(self, seconds: float) -> None:
        self._now += seconds
