"""Durable storage of events, items and users.

`Store` is the protocol every backend implements: `SQLiteStore` is the embedded default,
`PostgresStore` the server (KAIROS_STORE_URL=postgresql://...). An event is acknowledged
only after `append_events` has committed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kairos.store.base import EventRecord, ItemRecord, Store, UserRecord
from kairos.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from kairos.config import Settings


def open_store(settings: Settings) -> Store:
    """The store the settings name: PostgreSQL for a postgresql:// KAIROS_STORE_URL, else
    the SQLite file KAIROS_DB_PATH."""
    if settings.store_url.startswith(("postgresql://", "postgres://")):
        from kairos.store.postgres import PostgresStore  # psycopg only when asked for

        return PostgresStore(settings.store_url)
    return SQLiteStore(settings.db_path, synchronous=settings.sqlite_synchronous)


__all__ = ["EventRecord", "ItemRecord", "SQLiteStore", "Store", "UserRecord", "open_store"]
