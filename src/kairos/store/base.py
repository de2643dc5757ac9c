"""The storage protocol and the plain records it deals in."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol


class EventRecord(NamedTuple):
    """An event as stored: its timestamp is resolved, its id assigned by the store."""

    user_id: str
    item_id: str
    type: str
    timestamp: float
    value: float | None = None
    context: dict[str, Any] | None = None


@dataclass(slots=True)
class ItemRecord:
    item_id: str
    title: str = ""
    text: str = ""
    categories: list[str] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    available: bool = True


@dataclass(slots=True)
class UserRecord:
    user_id: str
    attributes: dict[str, Any] = field(default_factory=dict)
    text: str = ""
    created_at: float = 0.0


class Store(Protocol):
    def append_events(self, events: Sequence[EventRecord], bare_items: Sequence[ItemRecord]) -> None:
        """Store events (and the bare items their unknown ids create) in one transaction."""
        ...

    def iter_events(self, batch_size: int = 10_000) -> Iterator[list[EventRecord]]:
        """All events in the order they were acknowledged."""
        ...

    def events_after(self, position: int, limit: int = 10_000) -> list[tuple[int, EventRecord]]:
        """Up to `limit` events stored after log position `position`, with their positions
        (increasing, in acknowledgement order): how a reader tails the log."""
        ...

    def last_position(self) -> int:
        """The log position of the latest stored event (0 for an empty log)."""
        ...

    def user_events(self, user_id: str) -> list[EventRecord]:
        """One user's events in the order they were acknowledged."""
        ...

    def count_events(self) -> int: ...

    def upsert_items(self, items: Sequence[ItemRecord]) -> None: ...

    def get_item(self, item_id: str) -> ItemRecord | None: ...

    def iter_items(self) -> Iterator[ItemRecord]: ...

    def upsert_users(self, users: Sequence[UserRecord]) -> None:
        """Create or update users in one transaction (a user keeps its first created_at)."""
        ...

    def get_user(self, user_id: str) -> UserRecord | None: ...

    def iter_users(self) -> Iterator[UserRecord]: ...

    def forget_user(self, user_id: str) -> int:
        """Delete the user and every event of theirs; returns how many events went."""
        ...

    def close(self) -> None: ...
