"""Per-user online state: the recent sequence and the seen set."""

from __future__ import annotations

import bisect
import itertools
from typing import NamedTuple

_REVISIONS = itertools.count(1)  # process-wide: no two states of any user share a revision


class SequenceStep(NamedTuple):
    item: int  # catalogue index
    type: str
    timestamp: float
    value: float | None
    weight: float
    visit: bool


class UserState:
    __slots__ = ("event_count", "recent", "revision", "seen")

    def __init__(self) -> None:
        self.recent: list[SequenceStep] = []  # ordered by timestamp, oldest first
        self.seen: set[int] = set()
        self.event_count = 0
        # Changes with every event applied: what is derived from the state once per event
        # (the behaviour model's query, the ALS fold-in) is kept under it.
        self.revision = 0

    def touch(self) -> None:
        self.revision = next(_REVISIONS)

    def insert(self, step: SequenceStep, max_length: int) -> int:
        """Insert in time order (after equal times); returns the step's position."""
        recent = self.recent
        if not recent or recent[-1].timestamp <= step.timestamp:  # the usual case: in order
            position = len(recent)
            recent.append(step)
        else:
            position = bisect.bisect_right(recent, step.timestamp, key=lambda s: s.timestamp)
            recent.insert(position, step)
        if len(self.recent) > max_length:
            del self.recent[0]
            position -= 1
        return position

    def visits_before(self, position: int, since: float, limit: int, other_than: int) -> list[int]:
        """Items of up to `limit` visits before `position`, newest first, no older than
        `since`; visits of `other_than` are skipped but count towards the limit."""
        found: list[int] = []
        counted = 0
        recent = self.recent
        for j in range(position - 1, -1, -1):
            step = recent[j]
            if step.timestamp < since:
                break
            if step.visit:
                if step.item != other_than:
                    found.append(step.item)
                counted += 1
                if counted == limit:
                    break
        return found

    def recent_visits(self, limit: int) -> list[SequenceStep]:
        """The latest `limit` visits of distinct items, newest first."""
        out: list[SequenceStep] = []
        items: set[int] = set()
        for step in reversed(self.recent):
            if step.visit and step.item not in items:
                out.append(step)
                items.add(step.item)
                if len(out) == limit:
                    break
        return out
