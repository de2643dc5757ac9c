"""Push's durable state: its tables, in SQLite beside the engine's tables or, with
KAIROS_STORE_URL=postgresql://..., in the same PostgreSQL as the log (push/postgres.py),
so deciders and delivery workers on any node share one outbox.

One connection per process, serialised by a lock. Every change is a transaction: a
notification row is committed before anything is sent. The SQL push writes runs on
both (`?` placeholders, `ON CONFLICT`); the few phrases that differ are attributes of
the database.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from kairos.config import Settings
from kairos.store import names_postgres


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchall(self) -> list[Any]: ...

    def fetchone(self) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """What a transaction yields (sqlite3's own calls; PostgreSQL's adapter speaks them)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> Cursor: ...


def open_push_database(settings: Settings, path: Path) -> PushDatabase:
    """PostgreSQL when the store is there, else the SQLite file at `path` (the store's)."""
    if names_postgres(settings.store_url):
        # psycopg only when asked for
        from kairos.push.postgres import PostgresPushDatabase

        return PostgresPushDatabase(settings.store_url)
    return SQLitePushDatabase(path, settings.sqlite_synchronous)


SCHEMA = """
CREATE TABLE IF NOT EXISTS push_notifications (
    seq          INTEGER PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    dedupe_key   TEXT NOT NULL UNIQUE,
    user_id      TEXT NOT NULL,
    item_id      TEXT NOT NULL,
    items        TEXT,
    type         TEXT NOT NULL,
    channel      TEXT,
    title        TEXT NOT NULL DEFAULT '',
    body         TEXT NOT NULL DEFAULT '',
    reason       TEXT NOT NULL DEFAULT '',
    p            REAL NOT NULL DEFAULT 0,
    campaign_id  TEXT,
    trigger_id   TEXT,
    status       TEXT NOT NULL,
    suppressed_reason TEXT,
    created_at   REAL NOT NULL,
    due_at       REAL NOT NULL,
    expires_at   REAL NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    lease_until  REAL,
    worker       TEXT,
    delivered_at REAL,
    sent_seq     INTEGER,
    opened_at    REAL,
    clicked_at   REAL,
    dismissed_at REAL
);
CREATE INDEX IF NOT EXISTS push_due ON push_notifications (status, due_at);
CREATE INDEX IF NOT EXISTS push_by_user ON push_notifications (user_id, due_at);
CREATE INDEX IF NOT EXISTS push_by_campaign ON push_notifications (campaign_id) WHERE campaign_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS push_by_sent ON push_notifications (sent_seq) WHERE sent_seq IS NOT NULL;
CREATE TABLE IF NOT EXISTS push_triggers (
    id          INTEGER PRIMARY KEY,
    kind        TEXT NOT NULL,
    key         TEXT NOT NULL,
    payload     TEXT NOT NULL DEFAULT '{}',
    received_at REAL NOT NULL,
    due_at      REAL NOT NULL,
    status      TEXT NOT NULL DEFAULT 'pending',
    decided_at  REAL,
    outcome     TEXT,
    UNIQUE (kind, key)
);
CREATE INDEX IF NOT EXISTS push_triggers_due ON push_triggers (status, due_at);
CREATE TABLE IF NOT EXISTS push_preferences (
    user_id     TEXT PRIMARY KEY,
    preferences TEXT NOT NULL,
    updated_at  REAL NOT NULL,
    version     INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS push_campaigns (
    id          TEXT PRIMARY KEY,
    request     TEXT NOT NULL,
    created_at  REAL NOT NULL,
    decided_at  REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS push_channels (
    name        TEXT PRIMARY KEY,
    config      TEXT NOT NULL,
    updated_at  REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS push_items (
    item_id     TEXT PRIMARY KEY,
    available   INTEGER NOT NULL,
    price       REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS push_meta (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL
) WITHOUT ROWID;
"""


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def meta_in(db: Connection, key: str, default: str) -> str:
    """Inside a transaction."""
    row = db.execute("SELECT value FROM push_meta WHERE key = ?", (key,)).fetchone()
    return str(row[0]) if row else default


def set_meta(db: Connection, key: str, value: str) -> None:
    """Inside a transaction (`db` is what `transaction()` yields)."""
    db.execute("INSERT INTO push_meta (key, value) VALUES (?, ?) "
               "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))


class PushDatabase(ABC):
    """Push's tables on one database; SQLitePushDatabase or PostgresPushDatabase (postgres.py).
    A subclass sets `db`, `lock`, `path` and the phrases that differ between the two: a
    claim that passes rows another worker holds, a field of a JSON column, "contains"."""

    db: Any
    lock: threading.RLock
    path: Path | None  # the SQLite file; None on a server
    skip_locked: str  # appended to a claim's SELECT
    _json_field: str  # format of the text of `field` in a JSON column
    _contains: str  # format of "`column` contains the parameter"

    @abstractmethod
    def transaction(self, exclusive: bool = True) -> AbstractContextManager[Connection]:
        """Committed whole or rolled back. `exclusive` (the default): one at a time across
        every process on the database, so a read, a check and a write are atomic; a claim
        that locks its own rows passes False."""

    @abstractmethod
    def query(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def meta(self, key: str, default: str | None = None) -> str | None:
        rows = self.query("SELECT value FROM push_meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else default

    def json_field(self, column: str, field: str) -> str:
        return self._json_field.format(column=column, field=field)

    def contains(self, column: str) -> str:
        return self._contains.format(column=column)

    def close(self) -> None:
        with self.lock:
            self.db.close()


class SQLitePushDatabase(PushDatabase):
    skip_locked = ""  # BEGIN IMMEDIATE already makes every transaction one at a time
    _json_field = "json_extract({column}, '$.{field}')"
    _contains = "instr({column}, ?) > 0"

    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.lock = threading.RLock()
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.execute("PRAGMA busy_timeout=30000")  # the engine and other processes write here too
        with self.lock:
            self.db.executescript(SCHEMA)
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(push_preferences)")}
            if "version" not in columns:  # a database from before preferences were versioned
                self.db.execute("ALTER TABLE push_preferences ADD COLUMN version INTEGER NOT NULL DEFAULT 0")

    @contextmanager
    def transaction(self, exclusive: bool = True) -> Iterator[Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any error), holding the lock: exclusive
        whatever `exclusive` says (SQLite has one writer at a time)."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def query(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            return self.db.execute(sql, parameters).fetchall()
