"""sqlite3's calls over a psycopg connection, for the tables that sit beside the log
(push, experiments) and are written in SQL both databases run: `?` placeholders,
`ON CONFLICT`, `RETURNING`. What differs is said by the caller, not translated here."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg


def dialect(sql: str) -> str:
    """sqlite3's `?` placeholders as psycopg's `%s` (a literal % doubled first)."""
    return sql.replace("%", "%%").replace("?", "%s")


class Nothing:
    """What executemany of no rows returns: it changed nothing."""

    rowcount = 0

    def fetchall(self) -> list[Any]:
        return []

    def fetchone(self) -> Any:
        return None

    def __iter__(self) -> Any:
        return iter(())


class SqliteCalls:
    """`execute` and `executemany` as sqlite3's connection has them."""

    def __init__(self, db: psycopg.Connection[Any]) -> None:
        self._db = db

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        cursor = self._db.cursor()
        cursor.execute(dialect(sql), parameters or None)  # type: ignore[arg-type]  # our own SQL
        return cursor

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> psycopg.Cursor[Any] | Nothing:
        rows = list(rows)
        if not rows:
            return Nothing()
        cursor = self._db.cursor()
        cursor.executemany(dialect(sql), rows)  # type: ignore[arg-type]  # rowcount: the sum, as sqlite3's
        return cursor
