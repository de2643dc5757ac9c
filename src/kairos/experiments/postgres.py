"""Experiments' tables on PostgreSQL: one set of experiments for every node. Schema
changes are numbered and recorded in `kairos_experiments_schema`."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from kairos.store.migrations import migrate
from kairos.store.sqlite_dialect import SqliteCalls, dialect

EXPERIMENTS_LOCK = 0x6B61697265  # the advisory lock of exclusive experiment transactions

MIGRATIONS: list[str] = [
    # 1: the tables of experiments/database.py, with PostgreSQL's types
    """
    CREATE TABLE experiments (
        id          TEXT PRIMARY KEY,
        spec        TEXT NOT NULL,
        status      TEXT NOT NULL,
        created_at  DOUBLE PRECISION NOT NULL,
        stopped_at  DOUBLE PRECISION,
        winner      TEXT
    );
    CREATE TABLE experiment_exposures (
        request_id  TEXT PRIMARY KEY,
        experiment  TEXT NOT NULL,
        arm         TEXT NOT NULL,
        user_id     TEXT NOT NULL,
        impressions INTEGER NOT NULL,
        ts          DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX experiment_exposures_by_arm ON experiment_exposures (experiment, arm, user_id);
    CREATE TABLE experiment_outcomes (
        request_id  TEXT NOT NULL,
        item_id     TEXT NOT NULL,
        type        TEXT NOT NULL,
        experiment  TEXT NOT NULL,
        arm         TEXT NOT NULL,
        user_id     TEXT NOT NULL,
        ts          DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (request_id, item_id, type)
    );
    CREATE INDEX experiment_outcomes_by_arm ON experiment_outcomes (experiment, arm, user_id);
    """,
]


class PostgresExperimentDatabase:
    def __init__(self, url: str) -> None:
        self.lock = threading.RLock()
        self.db = psycopg.connect(url, autocommit=True)
        with self.lock:
            migrate(self.db, "kairos_experiments_schema", MIGRATIONS, EXPERIMENTS_LOCK)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self.lock, self.db.transaction():
            self.db.execute("SELECT pg_advisory_xact_lock(%s)", (EXPERIMENTS_LOCK,))
            yield

    def query(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            cursor = self.db.execute(dialect(sql), parameters or None)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description is not None else []  # a write: no rows, as sqlite3

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> int:
        with self.lock:
            return self.db.execute(dialect(sql), parameters or None).rowcount  # type: ignore[arg-type]

    def insert_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        with self.lock, self.db.transaction():
            SqliteCalls(self.db).executemany(sql, rows)

    def close(self) -> None:
        with self.lock:
            self.db.close()
