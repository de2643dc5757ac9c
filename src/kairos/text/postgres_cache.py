"""The embedding cache in PostgreSQL: every node reads the vectors any node computed, so
a catalogue is encoded once per deployment, not once per node."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import numpy as np
import psycopg

from kairos.store.migrations import migrate

EMBEDDINGS_LOCK = 0x6B656D6264  # the advisory lock of this schema's migrations

MIGRATIONS: list[str] = [
    # 1: one vector per (model, text)
    """
    CREATE TABLE embeddings (
        model_id  TEXT NOT NULL,
        text_hash TEXT NOT NULL,
        vector    BYTEA NOT NULL,
        PRIMARY KEY (model_id, text_hash)
    );
    """,
]


class PostgresEmbeddingCache:
    def __init__(self, url: str) -> None:
        self._lock = threading.Lock()
        self._db: psycopg.Connection[Any] = psycopg.connect(url, autocommit=True)
        with self._lock:
            migrate(self._db, "kairos_embeddings_schema", MIGRATIONS, EMBEDDINGS_LOCK)

    def get(self, model_id: str, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        wanted = list(dict.fromkeys(hashes))
        if not wanted:
            return {}
        with self._lock:
            rows = self._db.execute("SELECT text_hash, vector FROM embeddings WHERE model_id = %s "
                                    "AND text_hash = ANY(%s)", (model_id, wanted)).fetchall()
        return {h: np.frombuffer(bytes(v), dtype=np.float32) for h, v in rows}

    def put(self, model_id: str, vectors: dict[str, np.ndarray]) -> None:
        if not vectors:
            return
        rows = [(model_id, h, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for h, v in vectors.items()]
        with self._lock, self._db.transaction(), self._db.cursor() as cursor:
            # Nodes that encode the same new text at once write the same vector: first one wins.
            cursor.executemany("INSERT INTO embeddings (model_id, text_hash, vector) VALUES (%s, %s, %s) "
                               "ON CONFLICT (model_id, text_hash) DO NOTHING", rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()
