"""Appending to the event log: SQLite against PostgreSQL, batches of 500.

For each store, 40,000 events (views of 2,000 items by 5,000 users) appended in batches
of 500 by one writer and by four at once (each its own connection, as processes or
nodes are), then through `Engine.ingest` (validation excluded; the online state's update
included). PostgreSQL is a temporary local cluster (tests/postgres_server.py, the
Debian package's server, fsync on), or --url for one of yours (its database is used as
is: give it an empty one). Then, with ml-latest-small imported into PostgreSQL, two
`kairos serve` processes over it: an event posted to A, the time until B's live stream
of that user's list sends the new list (load.py's visibility phase; B is woken by
LISTEN/NOTIFY).

    .venv/bin/python benchmarks/store.py
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
from _machine import machine_info  # noqa: E402
from load import DEFAULT_DATA, free_port, kairos, visibility_phase  # noqa: E402
from postgres_server import PostgresServer, binaries  # noqa: E402

from kairos.store import EventRecord, SQLiteStore, Store  # noqa: E402

BATCH = 500


def batches(count: int, seed: int) -> list[list[EventRecord]]:
    rng = random.Random(seed)
    events = [EventRecord(f"u{rng.randrange(5_000)}", f"i{rng.randrange(2_000)}", "view", 1.7e9 + i * 0.01)
              for i in range(count)]
    return [events[i:i + BATCH] for i in range(0, count, BATCH)]


def append(open_store: Any, writers: int, count: int) -> dict[str, float]:
    stores: list[Store] = [open_store() for _ in range(writers)]
    work = batches(count, seed=writers)
    latencies: list[float] = []

    def write(store: Store, mine: list[list[EventRecord]]) -> None:
        for batch in mine:
            started = time.perf_counter()
            store.append_events(batch, [])
            latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=write, args=(store, work[w::writers])) for w, store in enumerate(stores)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for store in stores:
        store.close()
    latencies.sort()
    return {"events_per_s": round(count / elapsed), "batch_p50_ms": round(1000 * latencies[len(latencies) // 2], 2),
            "batch_p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 2)}


def engine_ingest(settings: dict[str, Any], count: int) -> dict[str, float]:
    from kairos.config import Settings
    from kairos.engine import Engine

    engine = Engine(Settings(semantic_enabled=False, snapshot_interval_s=0, **settings))
    work = batches(count, seed=9)
    started = time.perf_counter()
    for batch in work:
        engine.ingest_records(batch)
    elapsed = time.perf_counter() - started
    engine.close(save_vectors=False)
    return {"events_per_s": round(count / elapsed)}


def visibility(url: str, workdir: Path, trials: int) -> dict[str, Any]:
    import os
    import subprocess
    from types import SimpleNamespace

    env = {"KAIROS_STORE_URL": url}
    db = workdir / "visibility.db"  # the files beside the log (push, leases)
    subprocess.run(kairos("import", "movielens", "--db", str(db), str(DEFAULT_DATA)), check=True,
                   env={**os.environ, **env}, capture_output=True)
    print("postgresql visibility across two processes (ml-latest-small imported):", flush=True)
    return visibility_phase(db, SimpleNamespace(workdir=workdir, visibility_trials=trials), env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--url", default="", help="An empty PostgreSQL database (default: a temporary cluster).")
    parser.add_argument("--visibility-trials", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "store.json")
    args = parser.parse_args(argv)
    server = None
    if not args.url:
        bin_dir = binaries()
        if bin_dir is None:
            raise SystemExit("PostgreSQL is not installed (apt-get install postgresql), or pass --url")
        server = PostgresServer(bin_dir, free_port())
    results: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            from kairos.store.postgres import PostgresStore

            urls = [args.url] if args.url else []

            def postgres_url() -> str:
                return urls.pop() if urls else server.new_database()  # type: ignore[union-attr]

            for name, fresh in (("sqlite", lambda n: Path(tmp) / f"{n}.db"), ("postgresql", lambda n: postgres_url())):
                for writers in (1, 4):
                    where = fresh(f"append{writers}")
                    opener = ((lambda w=where: SQLiteStore(w)) if name == "sqlite"
                              else (lambda w=where: PostgresStore(w)))
                    row = append(opener, writers, args.events)
                    results[f"{name}, {writers} writer{'s' if writers > 1 else ''}"] = row
                    print(f"{name:10} {writers} writer(s): {row['events_per_s']:>7,} events/s  batch p50 "
                          f"{row['batch_p50_ms']} ms, p99 {row['batch_p99_ms']} ms", flush=True)
                where = fresh("engine")
                settings = {"db_path": where} if name == "sqlite" else \
                    {"db_path": Path(tmp) / "pg-side.db", "store_url": where}
                row = engine_ingest(settings, args.events)
                results[f"{name}, Engine.ingest"] = row
                print(f"{name:10} Engine.ingest: {row['events_per_s']:>7,} events/s", flush=True)
            if server is not None and args.visibility_trials and DEFAULT_DATA.is_dir():
                results["postgresql, visibility across two processes"] = visibility(
                    server.new_database(), Path(tmp), args.visibility_trials)
    finally:
        if server is not None:
            server.stop()
    document = {"benchmark": "store", "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": shlex.join([sys.executable, *sys.argv]), "machine": machine_info(),
                "events": args.events, "batch": BATCH, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
