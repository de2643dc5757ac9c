"""The storage protocol and the plain records it deals in."""

from __future__ import annotations

import hashlib
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


KEYS_KEPT_S = 24 * 3600.0  # how long a batch's idempotency key answers a retry


@dataclass(frozen=True, slots=True)
class BatchKey:
    """A client's Idempotency-Key for one batch of events, and a digest of the batch it
    came with: the same key with another batch is an error, not a replay."""

    key: str
    digest: str


class AlreadyAppended(Exception):
    """The batch's key was stored before: its events are in the log, none were added now."""

    def __init__(self, accepted: int, position: int) -> None:
        super().__init__(f"already appended ({accepted} events, up to position {position})")
        self.accepted = accepted
        self.position = position


class KeyReused(Exception):
    """An idempotency key sent again with a different batch."""


def check_key(stored: tuple[Any, ...] | None, key: BatchKey) -> None:
    """Raise for a key stored before: a replay (AlreadyAppended) or a reuse (KeyReused)."""
    if stored is None:
        return
    digest, accepted, position = stored
    if digest != key.digest:
        raise KeyReused(f"Idempotency-Key {key.key!r} was sent before with a different batch")
    raise AlreadyAppended(int(accepted), int(position))


def forget_digest(user_id: str) -> str:
    """How the change feed names a forgotten user (replicas hash the ids they hold)."""
    return hashlib.sha256(b"kairos-forget\0" + user_id.encode("utf-8")).hexdigest()[:32]


class Store(Protocol):
    """The durable log (events, by position) and the catalogue and profiles beside it.

    Every change to items and users is also recorded in a change feed (`changes_after`):
    a replica that follows the log re-reads what changed, so any process may write."""

    def append_events(self, events: Sequence[EventRecord], bare_items: Sequence[ItemRecord],
                      key: BatchKey | None = None) -> int:
        """Store events (and the bare items their unknown ids create) in one transaction;
        returns the log position of the last one (the batch holds the positions below it).
        With a key, the key is stored in the same transaction (kept KEYS_KEPT_S): a batch
        whose key is stored already raises AlreadyAppended and adds nothing, one whose key
        came with another batch raises KeyReused."""
        ...

    def iter_events(self, batch_size: int = 10_000) -> Iterator[list[EventRecord]]:
        """All events in the order they were acknowledged."""
        ...

    def events_after(self, position: int, limit: int = 10_000) -> list[tuple[int, EventRecord]]:
        """Up to `limit` events stored after log position `position`, with their positions
        (increasing, in acknowledgement order): how a reader tails the log."""
        ...

    def last_position(self) -> int:
        """The latest log position handed out (0 for an empty log); never decreases."""
        ...

    def log_version(self) -> int:
        """A number that changes whenever another connection commits (cheap to ask: a
        follower skips reading the log while it stays the same)."""
        ...

    def wait_for_writes(self, timeout_s: float) -> bool:
        """Block until some connection commits a write (True; it may be this one's), or
        `timeout_s` passes (False). A store that cannot be told returns False at once, and
        its followers poll."""
        ...

    def changes_after(self, position: int, limit: int = 10_000) -> list[tuple[int, str, str]]:
        """(position, kind, key) of the change feed after `position`: kind `item` or `user`
        (re-read it), or `forget` (key: `forget_digest` of the user forgotten)."""
        ...

    def last_change(self) -> int:
        """The change feed's latest position (0 when empty); never decreases."""
        ...

    def user_events(self, user_id: str) -> list[EventRecord]:
        """One user's events in the order they were acknowledged."""
        ...

    def count_events(self) -> int: ...

    def upsert_items(self, items: Sequence[ItemRecord]) -> int:
        """Create or update items in one transaction; returns the change feed's position."""
        ...

    def get_item(self, item_id: str) -> ItemRecord | None: ...

    def iter_items(self) -> Iterator[ItemRecord]: ...

    def upsert_users(self, users: Sequence[UserRecord]) -> int:
        """Create or update users in one transaction (a user keeps its first created_at);
        returns the change feed's position."""
        ...

    def get_user(self, user_id: str) -> UserRecord | None: ...

    def iter_users(self) -> Iterator[UserRecord]: ...

    def forget_user(self, user_id: str) -> int:
        """Delete the user and every event of theirs; returns how many events went."""
        ...

    def close(self) -> None: ...
