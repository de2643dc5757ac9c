"""kill -9 under load: nothing acknowledged may be lost.

Each trial starts `kairos serve --workers 2` over one database, sends batches of
events from several concurrent clients (each event tagged with a unique sequence
number in its context), and at a random moment kills every process of the server
with SIGKILL. Then it restarts the server, times how long until /healthz answers,
and checks that every event of every acknowledged batch is in the store and in the
restarted state. Events of batches that were never acknowledged may or may not be
there (the client would retry them); none may be there twice.

    .venv/bin/python benchmarks/crash.py                 # 20 trials
    .venv/bin/python benchmarks/crash.py --trials 3      # a short run

Not part of CI (tests/test_crash_e2e.py runs a short version).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _machine import machine_info
from load import free_port

BATCH = 200



class Server:
    def __init__(self, db: Path, workers: int, log: Path, store_url: str = "") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        started = time.monotonic()
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("kairos")), "serve", "--db", str(db), "--port", str(self.port),
             "--workers", str(workers)],
            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "KAIROS_SEQUENTIAL_AUTO_TRAIN": "false", "KAIROS_SEQUENTIAL_RETRAIN_INTERVAL_S": "0",
                 **({"KAIROS_STORE_URL": store_url} if store_url else {})})
        while time.monotonic() - started < 120:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.02)
        else:
            raise RuntimeError(f"server did not start: see {log}")
        self.ready_s = time.monotonic() - started

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            self.kill()


def load_until_killed(url: str, clients: int, first: int, stop: threading.Event) -> tuple[set[int], set[int]]:
    """(sequence numbers acknowledged, sequence numbers sent without an answer)."""
    acknowledged: set[int] = set()
    unanswered: set[int] = set()
    lock = threading.Lock()
    counter = iter(range(first, 1 << 62, BATCH))

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=10.0) as http:
            while not stop.is_set():
                with lock:
                    start = next(counter)
                numbers = range(start, start + BATCH)
                body = {"events": [{"user_id": f"u{n % 997}", "item_id": f"i{n % 1499}", "type": "click",
                                    "timestamp": 1_700_000_000 + (n % 10_000_000) * 0.001, "context": {"seq": n}}
                                   for n in numbers]}
                try:
                    response = http.post("/v1/events", json=body)
                except httpx.HTTPError:
                    with lock:
                        unanswered.update(numbers)
                    return
                with lock:
                    (acknowledged if response.status_code == 200 else unanswered).update(numbers)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return acknowledged, unanswered


def stored(db: Path, store_url: str = "") -> list[int]:
    """The sequence numbers of every event in the log (SQLite file or PostgreSQL)."""
    if not store_url:
        with sqlite3.connect(db) as conn:
            return [int(row[0]) for row in conn.execute("SELECT json_extract(context, '$.seq') FROM events")]
    from kairos.store.postgres import PostgresStore

    store = PostgresStore(store_url)
    try:
        return [int(event.context["seq"]) for batch in store.iter_events() for event in batch if event.context]
    finally:
        store.close()


def trial(db: Path, workdir: Path, index: int, workers: int, clients: int, rng: random.Random,
          first: int, store_url: str = "") -> dict[str, Any]:
    server = Server(db, workers, workdir / "server.log", store_url)
    stop = threading.Event()
    box: dict[str, tuple[set[int], set[int]]] = {}
    loader = threading.Thread(target=lambda: box.setdefault("r", load_until_killed(server.url, clients, first, stop)))
    loader.start()
    time.sleep(rng.uniform(0.5, 3.0))
    server.kill()
    stop.set()
    loader.join()
    acknowledged, unanswered = box["r"]
    restarted = Server(db, workers, workdir / "server.log", store_url)
    health = httpx.get(f"{restarted.url}/healthz", timeout=10.0).json()
    restarted.stop()
    found = stored(db, store_url)
    present = set(found)
    lost = len(acknowledged - present)
    result = {"trial": index, "acknowledged": len(acknowledged), "unanswered": len(unanswered),
              "unanswered_stored": len(unanswered & present), "lost": lost,
              "duplicates": len(found) - len(present), "restart_s": round(restarted.ready_s, 2),
              "state_events": health["events"], "stored_events": len(found)}
    print(json.dumps(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--store-url", default="", help="postgresql://... (an empty database): the log there.")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "crash.json")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="kairos-crash-"))
    db = workdir / "crash.db"
    rng = random.Random(args.seed)
    trials = []
    for index in range(args.trials):
        trials.append(trial(db, workdir, index, args.workers, args.clients, rng, first=index * 10_000_000,
                            store_url=args.store_url))
    summary = {
        "benchmark": "crash", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]), "machine": machine_info(),
        "trials": len(trials), "acknowledged": sum(t["acknowledged"] for t in trials),
        "lost": sum(t["lost"] for t in trials), "duplicates": sum(t["duplicates"] for t in trials),
        "state_matches_store": all(t["state_events"] == t["stored_events"] for t in trials),
        "restart_s_max": max(t["restart_s"] for t in trials), "per_trial": trials,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "per_trial"}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["lost"] == 0 and summary["duplicates"] == 0 and summary["state_matches_store"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
