"""CPU of `Engine.ingest` per event, in process: 30 batches of 1,000 views (random known
users and items of the load benchmark's database, a copy of it), after one warm-up batch;
validation (`EventBatch.model_validate_json`) timed apart. Needs `benchmarks/load.py`'s
prepared database (run load.py once).

    .venv/bin/python benchmarks/ingest_cpu.py
"""

from __future__ import annotations

import json
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from load import copy_database  # noqa: E402


def main() -> int:
    from kairos.api.workers import single_threaded_kernels
    from kairos.config import Settings
    from kairos.engine import Engine
    from kairos.schema import EventBatch

    single_threaded_kernels()
    source = ROOT / "runs" / "load" / "ml.db"
    if not source.exists():
        raise SystemExit("run benchmarks/load.py once first (it prepares runs/load/ml.db)")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "ml.db"
        copy_database(source, db)
        with sqlite3.connect(db) as conn:
            users = [row[0] for row in conn.execute("SELECT DISTINCT user_id FROM events")]
            items = [row[0] for row in conn.execute("SELECT item_id FROM items")]
            latest = conn.execute("SELECT max(ts) FROM events").fetchone()[0]
        rng = random.Random(7)
        bodies = [json.dumps({"events": [{"user_id": rng.choice(users), "item_id": rng.choice(items), "type": "view",
                                          "timestamp": latest + 60.0 * b + i * 0.01} for i in range(1000)]})
                  for b in range(31)]
        engine = Engine(Settings(db_path=db, sequential_auto_train=False))
        started = time.process_time()
        batches = [EventBatch.model_validate_json(body) for body in bodies]
        print(f"validation: {1e6 * (time.process_time() - started) / 31_000:.1f} us per event")
        engine.ingest(batches[0].events)
        started = time.process_time()
        for batch in batches[1:]:
            engine.ingest(batch.events)
        print(f"Engine.ingest: {1e6 * (time.process_time() - started) / 30_000:.1f} us per event "
              "(SQLite commit and the online state's update)")
        engine.close(save_vectors=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
