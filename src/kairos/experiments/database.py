"""Experiments' durable state: tables beside the engine's in the same SQLite database
(one connection of its own, as push's; WAL lets it write beside the engine) or, with
KAIROS_STORE_URL=postgresql://..., in the same PostgreSQL as the log (postgres.py), so
every node assigns, records and reports one set of experiments."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from kairos.config import Settings
from kairos.store import names_postgres

SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    id          TEXT PRIMARY KEY,
    spec        TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  REAL NOT NULL,
    stopped_at  REAL,
    winner      TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS experiment_exposures (
    request_id  TEXT PRIMARY KEY,
    experiment  TEXT NOT NULL,
    arm         TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    impressions INTEGER NOT NULL,
    ts          REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS experiment_exposures_by_arm ON experiment_exposures (experiment, arm, user_id);
CREATE TABLE IF NOT EXISTS experiment_outcomes (
    request_id  TEXT NOT NULL,
    item_id     TEXT NOT NULL,
    type        TEXT NOT NULL,
    experiment  TEXT NOT NULL,
    arm         TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    ts          REAL NOT NULL,
    PRIMARY KEY (request_id, item_id, type)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS experiment_outcomes_by_arm ON experiment_outcomes (experiment, arm, user_id);
"""


class ExperimentDatabase(Protocol):
    def exclusive(self) -> AbstractContextManager[None]:
        """A transaction no other process or node runs beside: a check and a write in it
        are atomic (query and execute inside it belong to it)."""
        ...

    def query(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> int: ...

    def insert_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None: ...

    def close(self) -> None: ...


def open_experiment_database(settings: Settings, path: Path) -> ExperimentDatabase:
    """PostgreSQL when the store is there, else the SQLite file at `path` (the store's)."""
    if names_postgres(settings.store_url):
        # psycopg only when asked for
        from kairos.experiments.postgres import PostgresExperimentDatabase

        return PostgresExperimentDatabase(settings.store_url)
    return SQLiteExperimentDatabase(path)


class SQLiteExperimentDatabase:
    def __init__(self, path: str | Path, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self.lock = threading.RLock()
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.execute("PRAGMA busy_timeout=30000")
        with self.lock:
            self.db.executescript(SCHEMA)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def query(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            return self.db.execute(sql, parameters).fetchall()

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> int:
        with self.lock:
            return self.db.execute(sql, parameters).rowcount

    def insert_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        with self.exclusive():
            self.db.executemany(sql, rows)

    def close(self) -> None:
        with self.lock:
            self.db.close()
