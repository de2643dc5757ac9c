"""What the Engine tells the parts that follow it (push, live streams) after a write.

The Engine calls each listener after the write is durable, outside its lock, with
what was written. Listeners must be quick (note the change, wake a worker): they
run on the writer's thread. A listener that needs every change even across a
crash reads the durable store instead (the event log by position, the items
table) and uses these calls only to wake up early.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from kairos.store.base import EventRecord, ItemRecord, UserRecord

log = logging.getLogger(__name__)


class EngineListener(Protocol):
    def events_ingested(self, records: Sequence[EventRecord]) -> None:
        """Events were stored and applied to the online state."""
        ...

    def items_upserted(self, records: Sequence[ItemRecord]) -> None:
        """Items were created or replaced (availability changes included)."""
        ...

    def users_upserted(self, records: Sequence[UserRecord]) -> None:
        """Profiles (stated interests included) were created or replaced."""
        ...

    def user_forgotten(self, user_id: str) -> None:
        """A user and everything of theirs was deleted."""
        ...


class Listeners:
    """The engine's listeners; one failing listener never fails the write or the others."""

    def __init__(self) -> None:
        self._listeners: list[EngineListener] = []

    def add(self, listener: EngineListener) -> None:
        self._listeners.append(listener)

    def remove(self, listener: EngineListener) -> None:
        self._listeners.remove(listener)

    def events_ingested(self, records: Sequence[EventRecord]) -> None:
        for listener in self._listeners:
            try:
                listener.events_ingested(records)
            except Exception:  # noqa: BLE001 - the write is durable already
                log.exception("listener %r failed on events", listener)

    def items_upserted(self, records: Sequence[ItemRecord]) -> None:
        for listener in self._listeners:
            try:
                listener.items_upserted(records)
            except Exception:  # noqa: BLE001
                log.exception("listener %r failed on items", listener)

    def users_upserted(self, records: Sequence[UserRecord]) -> None:
        for listener in self._listeners:
            try:
                listener.users_upserted(records)
            except Exception:  # noqa: BLE001
                log.exception("listener %r failed on users", listener)

    def user_forgotten(self, user_id: str) -> None:
        for listener in self._listeners:
            try:
                listener.user_forgotten(user_id)
            except Exception:  # noqa: BLE001
                log.exception("listener %r failed on a forgotten user", listener)
