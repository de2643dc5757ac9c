"""Versioned model artefacts in PostgreSQL, so nodes share one registry without a shared folder.

A registry (the behaviour model's, the ranking model's) still writes each version to
its local folder; with KAIROS_STORE_URL it also stores the folder as a tar archive
here, with its metadata, and the pointer to the version served. Every node reads the
pointer from here and fetches a version it lacks into its own folder once, so a model
trained on one node is served by all, and a rollback on one is a rollback on all.
Archive and pointer are written in one transaction: no node ever sees a pointer to a
version it cannot fetch. Each call takes its own short connection: a server asks for the
pointer every few seconds, and a connection held per registry would outlive its store.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from kairos.store.migrations import migrate

ARTEFACTS_LOCK = 0x6B6172746566  # the advisory lock of this schema's migrations

MIGRATIONS: list[str] = [
    # 1: versions (kind: "sequential", "ranking") and the one each kind serves
    """
    CREATE TABLE model_versions (
        kind       TEXT NOT NULL,
        version    TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        meta       JSONB NOT NULL,
        archive    BYTEA NOT NULL,
        PRIMARY KEY (kind, version)
    );
    CREATE TABLE model_current (
        kind    TEXT PRIMARY KEY,
        version TEXT NOT NULL
    );
    """,
]


_MIGRATED: set[str] = set()  # the URLs this process has brought up to date
_MIGRATED_LOCK = threading.Lock()


class PostgresArtefacts:
    def __init__(self, url: str) -> None:
        self.url = url

    def publish(self, kind: str, version: str, folder: Path, meta: dict[str, Any], keep: int) -> None:
        """Store the version's folder and serve it; keep the newest `keep` versions
        (and whichever is served)."""
        archive = _archive(folder)
        with self._connect() as db, db.transaction():
            db.execute("INSERT INTO model_versions (kind, version, created_at, meta, archive) "
                       "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (kind, version) DO NOTHING",
                       (kind, version, time.time(), Jsonb(meta), archive))
            _point(db, kind, version)
            db.execute("DELETE FROM model_versions WHERE kind = %s AND version <> %s AND version NOT IN "
                             "(SELECT version FROM model_versions WHERE kind = %s "
                       "ORDER BY created_at DESC, version DESC LIMIT %s)", (kind, version, kind, keep))

    def activate(self, kind: str, version: str) -> None:
        """Serve a stored version; FileNotFoundError when there is none by that name."""
        with self._connect() as db, db.transaction():
            found = db.execute("SELECT 1 FROM model_versions WHERE kind = %s AND version = %s FOR SHARE",
                               (kind, version)).fetchone()
            if found is None:
                raise FileNotFoundError(f"model {version!r} is not in the shared registry")
            _point(db, kind, version)

    def current(self, kind: str) -> str | None:
        with self._connect() as db:
            row = db.execute("SELECT version FROM model_current WHERE kind = %s", (kind,)).fetchone()
        return row[0] if row else None

    def listed(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        """(version, metadata) of every stored version of a kind, newest first."""
        with self._connect() as db:
            rows = db.execute("SELECT version, meta FROM model_versions WHERE kind = %s "
                              "ORDER BY created_at DESC, version DESC", (kind,)).fetchall()
        return [(version, meta) for version, meta in rows]

    def fetch(self, kind: str, version: str, root: Path) -> bool:
        """Unpack a stored version into root/version (complete before it has that name);
        False when there is none by that name."""
        with self._connect() as db:
            row = db.execute("SELECT archive FROM model_versions WHERE kind = %s AND version = %s",
                             (kind, version)).fetchone()
        if row is None:
            return False
        root.mkdir(parents=True, exist_ok=True)
        unpacking = root / f".{version}.{uuid.uuid4().hex[:6]}"
        with tarfile.open(fileobj=io.BytesIO(bytes(row[0])), mode="r:") as archive:
            archive.extractall(unpacking, filter="data")  # our own archive, still never outside `unpacking`
        try:
            os.replace(unpacking, root / version)
        except OSError:  # another process here fetched it first
            shutil.rmtree(unpacking, ignore_errors=True)
        return True

    def _connect(self) -> psycopg.Connection[Any]:
        db = psycopg.connect(self.url, autocommit=True)
        with _MIGRATED_LOCK:
            if self.url not in _MIGRATED:
                migrate(db, "kairos_models_schema", MIGRATIONS, ARTEFACTS_LOCK)
                _MIGRATED.add(self.url)
        return db


def _point(db: psycopg.Connection[Any], kind: str, version: str) -> None:
    db.execute("INSERT INTO model_current (kind, version) VALUES (%s, %s) "
               "ON CONFLICT (kind) DO UPDATE SET version = EXCLUDED.version", (kind, version))


def _archive(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:") as archive:  # weights do not compress: no gzip
        for path in sorted(folder.iterdir()):
            archive.add(path, arcname=path.name)
    return buffer.getvalue()

