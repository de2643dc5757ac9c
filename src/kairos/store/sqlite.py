"""SQLite (WAL) implementation of the Store protocol: the embedded default."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from kairos.store.base import (
    KEYS_KEPT_S,
    BatchKey,
    EventRecord,
    ItemRecord,
    UserRecord,
    check_key,
    forget_digest,
)

# PRAGMA user_version: 1 = log positions never reused, a change feed; 2 = batch keys
SCHEMA_VERSION = 2

_EVENT_COLUMNS = """(
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id   TEXT NOT NULL,
    item_id   TEXT NOT NULL,
    type      TEXT NOT NULL,
    ts        REAL NOT NULL,
    value     REAL,
    context   TEXT
)"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS events """ + _EVENT_COLUMNS + """;
CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id);
CREATE TABLE IF NOT EXISTS items (
    item_id    TEXT PRIMARY KEY,
    title      TEXT NOT NULL DEFAULT '',
    text       TEXT NOT NULL DEFAULT '',
    categories TEXT NOT NULL DEFAULT '[]',
    attributes TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    available  INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS users (
    user_id    TEXT PRIMARY KEY,
    attributes TEXT NOT NULL DEFAULT '{}',
    text       TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    key  TEXT NOT NULL,
    UNIQUE (kind, key)
);
CREATE TABLE IF NOT EXISTS batch_keys (
    key        TEXT PRIMARY KEY,
    digest     TEXT NOT NULL,
    accepted   INTEGER NOT NULL,
    position   INTEGER NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS batch_keys_by_age ON batch_keys (created_at);
"""

# A log position must never be handed out twice: a replica that has read up to N skips
# everything at or below N. Plain INTEGER PRIMARY KEY reuses the largest id once it is
# deleted (forgetting the user who wrote last); AUTOINCREMENT never does.
_EVENTS_V1 = """
CREATE TABLE events_v1 """ + _EVENT_COLUMNS + """;
INSERT INTO events_v1 (id, user_id, item_id, type, ts, value, context)
    SELECT id, user_id, item_id, type, ts, value, context FROM events ORDER BY id;
DROP TABLE events;
ALTER TABLE events_v1 RENAME TO events;
CREATE INDEX events_by_user ON events (user_id);
"""

_ITEM_UPSERT = """
INSERT INTO items (item_id, title, text, categories, attributes, created_at, available)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (item_id) DO UPDATE SET
    title = excluded.title, text = excluded.text, categories = excluded.categories,
    attributes = excluded.attributes, created_at = excluded.created_at,
    available = excluded.available
"""


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _item_row(item: ItemRecord) -> tuple[Any, ...]:
    return (
        item.item_id,
        item.title,
        item.text,
        _json(item.categories),
        _json(item.attributes),
        item.created_at,
        int(item.available),
    )


def _item_from_row(row: sqlite3.Row | tuple[Any, ...]) -> ItemRecord:
    return ItemRecord(
        item_id=row[0],
        title=row[1],
        text=row[2],
        categories=json.loads(row[3]),
        attributes=json.loads(row[4]),
        created_at=row[5],
        available=bool(row[6]),
    )


def _event_from_row(row: tuple[Any, ...]) -> EventRecord:
    return EventRecord(
        row[0], row[1], row[2], row[3], row[4], json.loads(row[5]) if row[5] else None
    )


class SQLiteStore:
    """One connection, serialised by a lock; WAL lets readers of other processes go on."""

    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=30000")  # other processes write to the same log
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._migrate()
        # Reads go through their own connection (WAL: they never wait for a write's commit,
        # the fsync included); an in-memory database has one connection for both.
        self._read_lock = self._lock if str(path) == ":memory:" else threading.RLock()
        self._reader = self._db if str(path) == ":memory:" else sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False)
        if self._reader is not self._db:
            self._reader.execute("PRAGMA busy_timeout=30000")
            self._reader.execute("PRAGMA query_only=1")

    def _migrate(self) -> None:
        if self._db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        with self._lock, self._transaction():  # one process migrates; the others find it done
            if self._db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
                return
            found = self._db.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()
            if found is not None and "AUTOINCREMENT" not in found[0].upper():
                for statement in _EVENTS_V1.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- events ---------------------------------------------------------------------------

    def append_events(self, events: Sequence[EventRecord], bare_items: Sequence[ItemRecord],
                      key: BatchKey | None = None) -> int:
        rows = [
            (e.user_id, e.item_id, str(e.type), e.timestamp, e.value,
             _json(e.context) if e.context else None)
            for e in events
        ]
        with self._lock, self._transaction():
            if key is not None:
                check_key(self._db.execute("SELECT digest, accepted, position FROM batch_keys WHERE key = ?",
                                            (key.key,)).fetchone(), key)
            if bare_items:
                self._db.executemany(
                    "INSERT OR IGNORE INTO items (item_id, created_at) VALUES (?, ?)",
                    [(item.item_id, item.created_at) for item in bare_items],
                )
            self._db.executemany(
                "INSERT INTO events (user_id, item_id, type, ts, value, context) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            # The write lock is held: the batch took the positions just below this one.
            position = self._last_rowid("events")
            if key is not None:
                now = time.time()
                self._db.execute("INSERT INTO batch_keys (key, digest, accepted, position, created_at) "
                                 "VALUES (?, ?, ?, ?, ?)", (key.key, key.digest, len(rows), position, now))
                self._db.execute("DELETE FROM batch_keys WHERE created_at < ?", (now - KEYS_KEPT_S,))
            return position

    def iter_events(self, batch_size: int = 10_000) -> Iterator[list[EventRecord]]:
        last_id = 0
        while True:
            with self._read_lock:
                rows = self._reader.execute(
                    "SELECT id, user_id, item_id, type, ts, value, context FROM events "
                    "WHERE id > ? ORDER BY id LIMIT ?",
                    (last_id, batch_size),
                ).fetchall()
            if not rows:
                return
            last_id = rows[-1][0]
            yield [_event_from_row(row[1:]) for row in rows]

    def events_after(self, position: int, limit: int = 10_000) -> list[tuple[int, EventRecord]]:
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT id, user_id, item_id, type, ts, value, context FROM events "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (position, limit),
            ).fetchall()
        return [(row[0], _event_from_row(row[1:])) for row in rows]

    def last_position(self) -> int:
        with self._read_lock:
            return self._last_rowid("events", self._reader)

    def _last_rowid(self, table: str, db: sqlite3.Connection | None = None) -> int:
        """The largest position ever handed out (deleted rows included)."""
        row = (db or self._db).execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
        return int(row[0]) if row else 0

    # -- the change feed: what replicas re-read besides events ------------------------------

    def log_version(self) -> int:
        # Changes when another connection commits; reads shared memory, not the file.
        with self._read_lock:
            return int(self._reader.execute("PRAGMA data_version").fetchone()[0])

    def wait_for_writes(self, timeout_s: float) -> bool:
        return False  # no notifications between processes: followers poll `log_version`

    def changes_after(self, position: int, limit: int = 10_000) -> list[tuple[int, str, str]]:
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT seq, kind, key FROM changes WHERE seq > ? ORDER BY seq LIMIT ?", (position, limit)
            ).fetchall()
        return [(int(row[0]), row[1], row[2]) for row in rows]

    def last_change(self) -> int:
        with self._read_lock:
            return self._last_rowid("changes", self._reader)

    def _record_changes(self, kind: str, keys: Sequence[str]) -> int:
        # REPLACE: one row per key, moved to the end of the feed by its latest change.
        self._db.executemany("INSERT OR REPLACE INTO changes (kind, key) VALUES (?, ?)",
                             [(kind, key) for key in dict.fromkeys(keys)])
        return self._last_rowid("changes")

    def user_events(self, user_id: str) -> list[EventRecord]:
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT user_id, item_id, type, ts, value, context FROM events "
                "WHERE user_id = ? ORDER BY id",
                (user_id,),
            ).fetchall()
        return [_event_from_row(row) for row in rows]

    def count_events(self) -> int:
        with self._read_lock:
            return int(self._reader.execute("SELECT count(*) FROM events").fetchone()[0])

    # -- items ----------------------------------------------------------------------------

    def upsert_items(self, items: Sequence[ItemRecord]) -> int:
        with self._lock, self._transaction():
            self._db.executemany(_ITEM_UPSERT, [_item_row(item) for item in items])
            return self._record_changes("item", [item.item_id for item in items])

    def get_item(self, item_id: str) -> ItemRecord | None:
        with self._read_lock:
            row = self._reader.execute(
                "SELECT item_id, title, text, categories, attributes, created_at, available "
                "FROM items WHERE item_id = ?",
                (item_id,),
            ).fetchone()
        return _item_from_row(row) if row else None

    def iter_items(self) -> Iterator[ItemRecord]:
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT item_id, title, text, categories, attributes, created_at, available "
                "FROM items ORDER BY rowid"  # first-insertion order = the live catalogue's order
            ).fetchall()
        return (_item_from_row(row) for row in rows)

    # -- users ----------------------------------------------------------------------------

    def upsert_users(self, users: Sequence[UserRecord]) -> int:
        with self._lock, self._transaction():
            self._db.executemany(
                "INSERT INTO users (user_id, attributes, text, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (user_id) DO UPDATE SET attributes = excluded.attributes, "
                "text = excluded.text",
                [(u.user_id, _json(u.attributes), u.text, u.created_at) for u in users],
            )
            return self._record_changes("user", [u.user_id for u in users])

    def get_user(self, user_id: str) -> UserRecord | None:
        with self._read_lock:
            row = self._reader.execute(
                "SELECT user_id, attributes, text, created_at FROM users WHERE user_id = ?",
                (user_id,),
            ).fetchone()
        if row is None:
            return None
        return UserRecord(row[0], json.loads(row[1]), row[2], row[3])

    def iter_users(self) -> Iterator[UserRecord]:
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT user_id, attributes, text, created_at FROM users"
            ).fetchall()
        return (UserRecord(r[0], json.loads(r[1]), r[2], r[3]) for r in rows)

    def forget_user(self, user_id: str) -> int:
        with self._lock, self._transaction():
            deleted = self._db.execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount
            self._db.execute("DELETE FROM users WHERE user_id = ?", (user_id,))
            self._db.execute("DELETE FROM changes WHERE kind = 'user' AND key = ?", (user_id,))
            # Replicas learn of it by a digest: the feed keeps no id of a forgotten user.
            self._record_changes("forget", [forget_digest(user_id)])
        return int(deleted)

    # -- plumbing -------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock, self._read_lock:
            if self._reader is not self._db:
                self._reader.close()
            self._db.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error: a batch is stored whole or not at all."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
