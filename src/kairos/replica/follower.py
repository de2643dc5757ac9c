"""A process's position in the durable log, and the one way its state moves past it.

Events are applied in log order, whoever wrote them: a process that writes a batch
applies it at once when nothing else was written since its position (no read-back),
and otherwise reads the log up to and past its own batch. Items and users are
re-read from the store when the change feed names them; a forgotten user arrives as
a digest of their id (the feed keeps no id of theirs).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kairos.store.base import EventRecord, ItemRecord, Store, UserRecord

log = logging.getLogger(__name__)

READ_BATCH = 10_000


class Applier(Protocol):
    """What a follower moves forward: the online state of one process (the engine)."""

    def apply_events(self, records: Sequence[EventRecord]) -> None: ...

    def apply_items(self, records: Sequence[ItemRecord]) -> None: ...

    def apply_users(self, records: Sequence[UserRecord]) -> None: ...

    def drop_users(self, digests: set[str]) -> list[str]:
        """Drop the users with these `forget_digest`s written by another process; returns
        their ids."""
        ...


@dataclass
class Caught:
    """What one catch-up applied, for the listeners (told after the lock is released)."""

    events: list[EventRecord] = field(default_factory=list)
    items: list[ItemRecord] = field(default_factory=list)
    users: list[UserRecord] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.events or self.items or self.users or self.forgotten)


class LogFollower:
    """Positions in the event log and the change feed, moved only under `lock`."""

    def __init__(self, store: Store, applier: Applier, lock: threading.RLock) -> None:
        self.store = store
        self.applier = applier
        self.lock = lock
        self.events_at = 0
        self.changes_at = 0
        self._seen_version: int | None = None

    def start_at(self, events_at: int, changes_at: int) -> None:
        with self.lock:
            self.events_at, self.changes_at = events_at, changes_at
            self._seen_version = None

    # -- this process's own writes --------------------------------------------------------

    def appended(self, records: Sequence[EventRecord], last: int) -> Caught:
        """This process stored `records` at the positions up to `last`."""
        with self.lock:
            if self.events_at == last - len(records):
                self.applier.apply_events(records)
                self.events_at = last
                return Caught(events=list(records))
            return self._catch_up()

    def changed_items(self, records: Sequence[ItemRecord], last: int) -> Caught:
        """This process stored `records` and the change feed reached `last`."""
        keys = len({r.item_id for r in records})
        return self._changed(keys, last, lambda: self.applier.apply_items(records), Caught(items=list(records)))

    def changed_users(self, records: Sequence[UserRecord], last: int) -> Caught:
        keys = len({r.user_id for r in records})
        return self._changed(keys, last, lambda: self.applier.apply_users(records), Caught(users=list(records)))

    def _changed(self, keys: int, last: int, apply: Callable[[], None], applied: Caught) -> Caught:
        with self.lock:
            if self.changes_at == last - keys:  # one feed row per key, and none from elsewhere between
                apply()
                self.changes_at = last
                return applied
            return self._catch_up()

    # -- everyone else's ------------------------------------------------------------------

    def catch_up(self) -> Caught:
        """Apply whatever the log holds past this process's positions."""
        version = self.store.log_version()
        if version == self._seen_version:
            return Caught()  # no other connection committed since we last read
        with self.lock:
            caught = self._catch_up()
            self._seen_version = version
            return caught

    def _catch_up(self) -> Caught:
        caught = Caught()
        self._changes(caught)
        while True:
            batch = self.store.events_after(self.events_at, READ_BATCH)
            if not batch:
                break
            records = [record for _, record in batch]
            self.applier.apply_events(records)
            self.events_at = batch[-1][0]
            caught.events.extend(records)
        self._changes(caught)  # items that arrived with those events
        return caught

    def _changes(self, caught: Caught) -> None:
        while True:
            batch = self.store.changes_after(self.changes_at, READ_BATCH)
            if not batch:
                return
            items = [r for _, kind, key in batch if kind == "item" and (r := self.store.get_item(key)) is not None]
            users = [r for _, kind, key in batch if kind == "user" and (r := self.store.get_user(key)) is not None]
            digests = {key for _, kind, key in batch if kind == "forget"}
            if items:
                self.applier.apply_items(items)
                caught.items.extend(items)
            if users:
                self.applier.apply_users(users)
                caught.users.extend(users)
            if digests:
                caught.forgotten.extend(self.applier.drop_users(digests))
            self.changes_at = batch[-1][0]


class FollowLoop:
    """Catches a process up whenever the store says another connection wrote (PostgreSQL's
    LISTEN/NOTIFY), or else every `interval_s` (SQLite), so what other processes write
    reaches its live streams and push without waiting for a request (a request catches
    up itself)."""

    WAKE_TIMEOUT_S = 0.5  # a store that notifies is still polled this often

    def __init__(self, catch_up: CatchUp, interval_s: float, wait_for_writes: WaitForWrites | None = None) -> None:
        self.catch_up = catch_up
        self.interval_s = interval_s
        self.wait_for_writes = wait_for_writes
        self._waiting_failed = False  # said once per failure, not on every poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lag_s = 0.0  # how long the latest catch-up took

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kairos-follow-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._woken() and self._stop.wait(self.interval_s):
                return
            started = time.perf_counter()
            try:
                self.catch_up()
            except Exception:
                log.exception("could not follow the event log")
            self.lag_s = time.perf_counter() - started

    def _woken(self) -> bool:
        if self.wait_for_writes is None:
            return False
        try:
            woken = self.wait_for_writes(self.WAKE_TIMEOUT_S)
        except Exception:  # the store's listening connection failed: poll meanwhile
            if not self._waiting_failed and not self._stop.is_set():
                log.warning("could not wait for writes; polling the log", exc_info=True)
            self._waiting_failed = True
            return False
        self._waiting_failed = False
        return woken


class CatchUp(Protocol):
    def __call__(self) -> object: ...


class WaitForWrites(Protocol):
    def __call__(self, timeout_s: float) -> bool: ...
