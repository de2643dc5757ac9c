"""Datasets for evaluation: any folder an importer reads, or an existing Kairos database."""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from kairos.config import Settings
from kairos.engine import Engine
from kairos.store import EventRecord, ItemRecord, SQLiteStore

# An evaluation engine is a scratch copy on a temporary SQLite file: never the deployment's
# PostgreSQL or Redis (KAIROS_STORE_URL, KAIROS_REDIS_URL), which hold the real log.
SCRATCH: dict[str, str] = {"store_url": "", "redis_url": ""}


@dataclass
class EvalData:
    name: str
    items: list[ItemRecord]
    events: list[EventRecord]  # in time order (ties: acknowledgement order)
    notes: list[str] = field(default_factory=list)
    synthetic_time: bool = False  # timestamps made up to keep each user's order (UniSRec files)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for e in self.events:
            digest.update(f"{e.user_id}\t{e.item_id}\t{e.type}\t{e.timestamp}\t{e.value}\n".encode())
        return digest.hexdigest()[:16]

    def summary(self) -> dict[str, int]:
        return {"users": len({e.user_id for e in self.events}),
                "items": len({e.item_id for e in self.events}), "events": len(self.events)}


def load_eval_data(path: Path, min_item_events: int = 0, min_user_events: int = 0, quiet: bool = True) -> EvalData:
    """Read a dataset: a Kairos .db, UniSRec atomic files, or a MovieLens release."""
    from kairos.datasets.unisrec import is_unisrec

    notes: list[str] = []
    synthetic_time = False
    if path.is_file():
        store = SQLiteStore(path)
        name = path.stem
    else:
        name = path.name
        scratch = Path(tempfile.mkdtemp(prefix="kairos-eval-")) / "import.db"
        engine = Engine(Settings(**SCRATCH, db_path=scratch, sqlite_synchronous="NORMAL"))
        if is_unisrec(path):
            from kairos.datasets.unisrec import import_unisrec

            import_unisrec(engine, path, quiet=quiet)
            synthetic_time = True
            notes.append("UniSRec files carry order but no timestamps: synthetic timestamps, "
                         "one day apart per user, keep each user's given order.")
        else:
            from kairos.datasets.movielens import import_movielens

            import_movielens(engine, path, quiet=quiet)
        store = engine.store
    items = list(store.iter_items())
    events = [e for batch in store.iter_events() for e in batch]
    store.close()
    events = sorted(events, key=lambda e: e.timestamp)  # stable: ties keep stored order
    if min_item_events or min_user_events:
        events = k_core_once(events, min_item_events, min_user_events)
        notes.append(f"filtered: items with >= {min_item_events} events, then users with >= "
                     f"{min_user_events} (one pass, as LlamaRec's preprocessing)")
    return EvalData(name, items, events, notes, synthetic_time)


def k_core_once(events: list[EventRecord], min_item: int, min_user: int) -> list[EventRecord]:
    """Drop items with fewer than min_item events, then users with fewer than min_user."""
    item_counts = Counter(e.item_id for e in events)
    events = [e for e in events if item_counts[e.item_id] >= min_item]
    user_counts = Counter(e.user_id for e in events)
    return [e for e in events if user_counts[e.user_id] >= min_user]
