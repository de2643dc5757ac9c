"""Durable storage of events, items and users.

`Store` is the protocol every backend implements: `SQLiteStore` is the embedded default,
`PostgresStore` the server (KAIROS_STORE_URL=postgresql://...). An event is acknowledged
only after `append_events` has committed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kairos.store.base import (
    AlreadyAppended,
    BatchKey,
    EventRecord,
    ItemRecord,
    KeyReused,
    Store,
    UserRecord,
)
from kairos.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from kairos.config import Settings
    from kairos.store.artefacts import PostgresArtefacts


def names_postgres(url: str) -> bool:
    """Whether a KAIROS_STORE_URL names a PostgreSQL server (else the store is SQLite)."""
    return url.startswith(("postgresql://", "postgres://"))


def open_store(settings: Settings) -> Store:
    """The store the settings name: PostgreSQL for a postgresql:// KAIROS_STORE_URL, else
    the SQLite file KAIROS_DB_PATH."""
    if names_postgres(settings.store_url):
        from kairos.store.postgres import PostgresStore  # psycopg only when asked for

        return PostgresStore(settings.store_url)
    return SQLiteStore(settings.db_path, synchronous=settings.sqlite_synchronous)


def shared_artefacts(store_url: str) -> PostgresArtefacts | None:
    """Model versions every node shares, in a PostgreSQL store; None for SQLite, whose
    registries are their folders alone."""
    if not names_postgres(store_url):
        return None
    from kairos.store.artefacts import PostgresArtefacts  # psycopg only when asked for

    return PostgresArtefacts(store_url)


__all__ = ["AlreadyAppended", "BatchKey", "EventRecord", "ItemRecord", "KeyReused", "SQLiteStore", "Store", "UserRecord", "names_postgres", "open_store", "shared_artefacts"]
