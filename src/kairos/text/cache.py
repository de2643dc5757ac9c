"""Embeddings are computed once: a table keyed by (model id, hash of the text).

An item's composed text decides its hash, so an item is re-encoded only when its
text or the model changes, and identical texts share one vector. The engine keeps
one such table beside its log (in its SQLite database, or in PostgreSQL where every
node shares it: text/postgres_cache.py) and, optionally, a machine-wide SQLite one in
the text cache folder that temporary databases (tests, evaluation) share.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np

from kairos.store import names_postgres

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    model_id  TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    vector    BLOB NOT NULL,
    PRIMARY KEY (model_id, text_hash)
) WITHOUT ROWID
"""


class EmbeddingCache(Protocol):
    def get(self, model_id: str, hashes: Iterable[str]) -> dict[str, np.ndarray]: ...

    def put(self, model_id: str, vectors: dict[str, np.ndarray]) -> None: ...

    def close(self) -> None: ...


def open_embedding_cache(store_url: str, path: Path) -> EmbeddingCache:
    """The cache beside the log: in PostgreSQL for a postgresql:// store, else in the
    SQLite file `path`."""
    if names_postgres(store_url):  # psycopg is imported only then
        from kairos.text.postgres_cache import PostgresEmbeddingCache

        return PostgresEmbeddingCache(store_url)
    return SQLiteEmbeddingCache(path)


class SQLiteEmbeddingCache:
    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # a cache: losing the last write costs a re-encode
        self._db.execute(_SCHEMA)
        self._db.commit()

    def get(self, model_id: str, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                rows = self._db.execute(
                    f"SELECT text_hash, vector FROM embeddings WHERE model_id = ? AND text_hash IN "
                    f"({','.join('?' * len(chunk))})",
                    (model_id, *chunk),
                ).fetchall()
                found.update((h, np.frombuffer(v, dtype=np.float32)) for h, v in rows)
        return found

    def put(self, model_id: str, vectors: dict[str, np.ndarray]) -> None:
        if not vectors:
            return
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO embeddings (model_id, text_hash, vector) VALUES (?, ?, ?)",
                [(model_id, h, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for h, v in vectors.items()],
            )
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()
