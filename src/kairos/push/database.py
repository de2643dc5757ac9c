"""Push's durable state: tables beside the engine's in the same SQLite database.

One connection of its own (WAL lets it work beside the engine's writer and other
processes: a `kairos push-worker`, the CLI), serialised by a lock. Every change is a
transaction: a notification row is committed before anything is sent.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
    updated_at  REAL NOT NULL
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


class PushDatabase:
    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.lock = threading.RLock()
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.execute("PRAGMA busy_timeout=30000")  # the engine and other processes write here too
        with self.lock:
            self.db.executescript(SCHEMA)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any error), holding the lock: a read,
        a check and a write inside it are atomic across threads and processes."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def query(self, sql: str, parameters: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            return self.db.execute(sql, parameters).fetchall()

    def meta(self, key: str, default: str | None = None) -> str | None:
        rows = self.query("SELECT value FROM push_meta WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    @staticmethod
    def meta_in(db: sqlite3.Connection, key: str, default: str) -> str:
        """Inside a transaction."""
        row = db.execute("SELECT value FROM push_meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    @staticmethod
    def set_meta(db: sqlite3.Connection, key: str, value: str) -> None:
        """Inside a transaction (`db` is what `transaction()` yields)."""
        db.execute("INSERT INTO push_meta (key, value) VALUES (?, ?) "
                   "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def close(self) -> None:
        with self.lock:
            self.db.close()
