"""Soak: mixed traffic for a long time, watching errors, memory and queues.

`kairos serve --workers 2` over a copy of the load benchmark's database (ml-latest-small,
models trained: run benchmarks/load.py once first), then, at a steady rate, from a few
client threads: event batches, recommendations, similar items, searches and item
upserts (`--read-only`: reads only). Every 10 s it samples the resident memory of every
server process, the errors so far, and the queues (/healthz's log position against the
store's, push's outbox). RSS growth is measured from the end of the warm-up (the first
fifth) to the end. A read-only soak tells a leak from state that grows with the log.

    .venv/bin/python benchmarks/soak.py --minutes 30
    .venv/bin/python benchmarks/soak.py --minutes 10 --read-only
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sqlite3
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _machine import machine_info  # noqa: E402
from load import Server, copy_database  # noqa: E402


def rss_mb(root_pid: int, depth: int = 1) -> float:
    """Resident memory of the supervisor and its serving processes (`depth` 1), in MB
    (Linux /proc). Deeper descendants are left out: the leader's snapshot writer is a
    fork that shares its pages (counting it doubled the figure for as long as it ran),
    and a training run is a passing process of its own."""
    children: dict[int, list[int]] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            children.setdefault(int(fields["PPid"].strip()), []).append(int(fields["Pid"].strip()))
        except (OSError, ValueError, KeyError):
            continue
    total, stack = 0.0, [(root_pid, 0)]
    while stack:
        pid, level = stack.pop()
        if level < depth:
            stack.extend((child, level + 1) for child in children.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return round(total, 1)


class Traffic:
    """Client threads at fixed rates; counts requests and errors by kind."""

    def __init__(self, url: str, users: list[str], items: list[str], read_only: bool, seed: int) -> None:
        self.url, self.users, self.items, self.read_only = url, users, items, read_only
        self.rng = random.Random(seed)
        self.counts: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.clock = time.time() + 1e6  # event timestamps after everything in the log

    def _count(self, kind: str, ok: bool) -> None:
        with self.lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if not ok:
                self.errors[kind] = self.errors.get(kind, 0) + 1

    def _loop(self, kind: str, per_second: float, make: Any) -> None:
        with httpx.Client(base_url=self.url, timeout=30.0) as client:
            next_at = time.monotonic()
            while not self.stop.is_set():
                try:
                    response = make(client)
                    self._count(kind, response.status_code < 400)
                except httpx.HTTPError:
                    self._count(kind, False)
                next_at += 1.0 / per_second
                self.stop.wait(max(0.0, next_at - time.monotonic()))

    def threads(self) -> list[threading.Thread]:
        rng = self.rng

        def recommend(client: httpx.Client) -> httpx.Response:
            return client.get(f"/v1/recommendations/{rng.choice(self.users)}", params={"n": 10})

        def similar(client: httpx.Client) -> httpx.Response:
            return client.get(f"/v1/items/{rng.choice(self.items)}/similar", params={"n": 10})

        def search(client: httpx.Client) -> httpx.Response:
            return client.get("/v1/search", params={"q": rng.choice(["space adventure", "romantic comedy",
                                                                      "war drama", "animated family"])})

        def events(client: httpx.Client) -> httpx.Response:
            self.clock += 1.0
            batch = [{"user_id": rng.choice(self.users) if rng.random() < 0.9 else f"new-{rng.randrange(10**9)}",
                      "item_id": rng.choice(self.items), "type": rng.choice(["view", "click", "purchase"]),
                      "timestamp": self.clock + i * 0.001} for i in range(100)]
            return client.post("/v1/events", json={"events": batch})

        def upsert(client: httpx.Client) -> httpx.Response:
            item = rng.choice(self.items) if rng.random() < 0.5 else f"soak-{rng.randrange(10**9)}"
            return client.put(f"/v1/items/{item}", json={"title": f"soak item {item}", "categories": ["Soak"]})

        plan: list[tuple[str, float, Any]] = [("recommend", 40.0, recommend), ("recommend", 40.0, recommend),
                                              ("similar", 10.0, similar), ("search", 5.0, search)]
        if not self.read_only:
            plan += [("events", 10.0, events), ("upsert", 1.0, upsert)]
        return [threading.Thread(target=self._loop, args=spec, daemon=True) for spec in plan]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--read-only", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "load")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    source = args.workdir / "ml.db"
    if not (args.workdir / "prepared.json").exists():
        print(f"no prepared database in {args.workdir}: run benchmarks/load.py first")
        return 2
    db = args.workdir / "soak.db"
    for path in args.workdir.glob("soak.db*"):
        if path.is_dir():
            import shutil

            shutil.rmtree(path)
        else:
            path.unlink()
    copy_database(source, db)
    with sqlite3.connect(db) as conn:
        users = [row[0] for row in conn.execute("SELECT DISTINCT user_id FROM events")]
        items = [row[0] for row in conn.execute("SELECT item_id FROM items LIMIT 5000")]
    server = Server(db, args.workers, args.workdir / "soak-server.log", {})
    traffic = Traffic(server.url, users, items, args.read_only, args.seed)
    threads = traffic.threads()
    samples: list[dict[str, Any]] = []
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(10)
            health = httpx.get(f"{server.url}/healthz", timeout=30.0).json()
            with sqlite3.connect(db) as conn:
                log_end = conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
                scheduled = conn.execute("SELECT count(*) FROM push_notifications WHERE status IN "
                                         "('scheduled', 'sending')").fetchone()[0]
            with traffic.lock:
                sample = {"t_s": round(time.monotonic() - started), "rss_mb": rss_mb(server.process.pid),
                          "requests": sum(traffic.counts.values()), "errors": sum(traffic.errors.values()),
                          "events": health["events"], "items": health["items"],
                          "behind_log": log_end - health["log_position"], "push_scheduled": scheduled}
            samples.append(sample)
            print(json.dumps(sample), flush=True)
    finally:
        traffic.stop.set()
        for thread in threads:
            thread.join(timeout=30)
        server.stop()
    warm = next(s for s in samples if s["t_s"] >= args.minutes * 60 / 5)
    last = samples[-1]
    summary = {
        "benchmark": "soak", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]), "machine": machine_info(),
        "minutes": args.minutes, "read_only": args.read_only, "workers": args.workers,
        "requests": traffic.counts, "errors": traffic.errors,
        "rss_mb_after_warm_up": warm["rss_mb"], "rss_mb_end": last["rss_mb"],
        "rss_growth_pct": round(100 * (last["rss_mb"] - warm["rss_mb"]) / warm["rss_mb"], 2),
        "events_added": last["events"] - samples[0]["events"], "max_behind_log": max(s["behind_log"] for s in samples),
        "samples": samples,
    }
    out = args.out or ROOT / "benchmarks" / "results" / f"soak{'-read-only' if args.read_only else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("samples", "machine")}))
    return 0 if not traffic.errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
