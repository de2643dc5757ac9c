"""What the ingest path needs of the replica a write lands in (the Engine)."""

from __future__ import annotations

import threading
from typing import Protocol

from kairos.clock import Clock
from kairos.replica.follower import Caught, LogFollower
from kairos.state import Catalog
from kairos.state.semantic import SemanticState
from kairos.store import EventRecord, Store


class WriteTarget(Protocol):
    clock: Clock
    store: Store
    catalog: Catalog
    semantic: SemanticState | None
    follower: LogFollower

    @property
    def lock(self) -> threading.RLock:
        """Orders writes and the state's changes: a write commits and is applied under it."""

    def tell(self, caught: Caught) -> None:
        """The listeners (push, live streams) learn what the state applied."""

    def catch_up(self) -> Caught: ...

    def knows_user(self, user_id: str) -> bool: ...

    def forget_here(self, user_id: str, events: list[EventRecord]) -> None:
        """The store has deleted the user: remove from the online state what their
        events (these) built, and everything derived from them."""
