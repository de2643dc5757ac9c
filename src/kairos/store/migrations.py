"""Numbered schema changes on PostgreSQL: applied in order, each recorded in a version
table, by one process at a time (an advisory lock), so nodes starting together agree."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg


def migrate(db: psycopg.Connection[Any], table: str, migrations: Sequence[str], lock: int) -> int:
    """Apply the migrations past the version recorded in `table` (our own SQL, no
    parameters); returns the version now in place."""
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
        db.execute(f"CREATE TABLE IF NOT EXISTS {table} (version INTEGER NOT NULL)")  # type: ignore[arg-type]
        row = db.execute(f"SELECT max(version) FROM {table}").fetchone()  # type: ignore[arg-type]
        version = row[0] if row and row[0] is not None else 0
        for number, sql in enumerate(migrations[version:], start=version + 1):
            db.execute(sql)  # type: ignore[arg-type]
            db.execute(f"INSERT INTO {table} (version) VALUES (%s)", (number,))  # type: ignore[arg-type]
            version = number
    return version
