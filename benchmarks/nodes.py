"""Two Kairos nodes over one PostgreSQL and one Redis (docs/deploy.md's shape, on one
machine): each node a `kairos serve` on its own port with its own local directory.

1. Visibility: an event posted to node A, the time until node B's live stream of that
   user's list sends the new list (B follows the log; LISTEN/NOTIFY wakes it).
2. Node loss: writers post event batches to both nodes and readers ask node B for
   recommendations; node A is killed with SIGKILL mid-run (the load balancer then sends
   every writer to B). Counts B's errors, checks every acknowledged event is in the
   log, and times node A's restart until it has caught up with the log.

    .venv/bin/python benchmarks/nodes.py          # temporary PostgreSQL and Redis
    .venv/bin/python benchmarks/nodes.py --trials 50

Needs ml-latest-small (../shared/data or KAIROS_DATA_DIR) for the catalogue.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
from _machine import machine_info
from _servers import postgres, redis
from crash import stored
from load import (
    DEFAULT_DATA,
    RECOMMEND_LUA,
    REPORT_LUA,
    Server,
    kairos,
    visibility_between,
    wrk,
)

BATCH = 100


def serving(a: Server, b: Server, store_url: str, work: Path, seconds: float) -> dict[str, Any]:
    """Recommendations at 8 clients: all on node A, then 4 on each node at once (wrk)."""
    with psycopg.connect(store_url) as connection:
        users = [row[0] for row in connection.execute("SELECT DISTINCT user_id FROM events ORDER BY 1 LIMIT 600")]
    (work / "users.txt").write_text("\n".join(users) + "\n")
    script = work / "recommend.lua"
    script.write_text(RECOMMEND_LUA % {"users": work / "users.txt", "seed": 7} + REPORT_LUA % {})
    for server in (a, b):  # every user served once per node: what is kept per event is warm
        wrk(server.url, script, 8, 10)
    one = wrk(a.url, script, 8, seconds)
    found: dict[str, dict[str, Any]] = {}
    threads = [threading.Thread(target=lambda name, url: found.__setitem__(name, wrk(url, script, 4, seconds)),
                                args=(name, server.url)) for name, server in (("a", a), ("b", b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    two = {"rps": round(found["a"]["rps"] + found["b"]["rps"], 1),
           "p50_ms": max(found["a"]["p50_ms"], found["b"]["p50_ms"]),
           "p99_ms": max(found["a"]["p99_ms"], found["b"]["p99_ms"]),
           "errors": found["a"]["errors"] + found["b"]["errors"], "per_node": found}
    print(f"  8 clients, 1 node: {one['rps']} req/s, p50 {one['p50_ms']} ms, p99 {one['p99_ms']} ms; "
          f"2 nodes: {two['rps']} req/s, p50 {two['p50_ms']} ms, p99 {two['p99_ms']} ms (the worse node's)",
          flush=True)
    return {"one_node": one, "two_nodes": two}


def node_loss(a: Server, b: Server, store_url: str, seconds_before: float, seconds_after: float) -> dict[str, Any]:
    acknowledged: set[int] = set()
    unanswered: set[int] = set()
    reader_errors: list[str] = []
    reads = [0]
    lock = threading.Lock()
    stop = threading.Event()
    a_down = threading.Event()
    counter = itertools.count(0, BATCH)

    def writer(k: int) -> None:
        clients = {"a": httpx.Client(base_url=a.url, timeout=10.0), "b": httpx.Client(base_url=b.url, timeout=10.0)}
        try:
            for turn in itertools.count():
                if stop.is_set():
                    return
                node = "b" if a_down.is_set() or (turn + k) % 2 else "a"
                with lock:
                    start = next(counter)
                numbers = range(start, start + BATCH)
                body = {"events": [{"user_id": f"u{n % 997}", "item_id": f"i{n % 1499}", "type": "click",
                                    "context": {"seq": n}} for n in numbers]}
                try:
                    response = clients[node].post("/v1/events", json=body)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    (acknowledged if ok else unanswered).update(numbers)
        finally:
            for client in clients.values():
                client.close()

    def reader(k: int) -> None:
        with httpx.Client(base_url=b.url, timeout=10.0) as http:
            for n in itertools.count(k):
                if stop.is_set():
                    return
                try:
                    response = http.get(f"/v1/recommendations/u{n % 997}", params={"n": 10})
                    if response.status_code != 200:
                        reader_errors.append(f"{response.status_code}")
                except httpx.HTTPError as error:
                    reader_errors.append(type(error).__name__)
                with lock:
                    reads[0] += 1

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    threads += [threading.Thread(target=reader, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(seconds_before)
    reads_before = reads[0]
    os.killpg(a.process.pid, signal.SIGKILL)
    a_down.set()
    killed_at = time.monotonic()
    time.sleep(seconds_after)
    stop.set()
    for thread in threads:
        thread.join()
    leader_after = httpx.get(f"{b.url}/healthz", timeout=10).json().get("leader")
    logged = stored(Path("unused"), store_url)  # the tagged events' numbers, as often as stored
    lost = acknowledged - set(logged)
    return {"acknowledged_events": len(acknowledged), "unanswered_events": len(unanswered),
            "acknowledged_lost": len(lost), "stored_twice": len(logged) - len(set(logged)), "b_reads": reads[0], "b_reads_after_kill": reads[0] - reads_before,
            "b_errors": len(reader_errors), "b_error_kinds": sorted(set(reader_errors))[:5],
            "b_leads_after_kill": leader_after, "seconds_after_kill": round(time.monotonic() - killed_at, 1)}


def restart(db: Path, log: Path, env: dict[str, str], store_url: str) -> dict[str, Any]:
    """Node A again: seconds until it answers, and until it has applied the whole log."""
    started = time.monotonic()
    a = Server(db, 1, log, env)
    answered = time.monotonic() - started
    with psycopg.connect(store_url) as connection:
        total = int(connection.execute("SELECT count(*) FROM events").fetchone()[0])  # type: ignore[index]
    while time.monotonic() - started < 300:
        if httpx.get(f"{a.url}/healthz", timeout=10).json().get("events", 0) >= total:
            break
        time.sleep(0.05)
    caught_up = time.monotonic() - started
    a.stop()
    return {"answers_after_s": round(answered, 2), "caught_up_after_s": round(caught_up, 2), "log_events": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store-url", default="", help="An empty PostgreSQL database (default: a temporary one).")
    parser.add_argument("--redis-url", default="", help="A Redis (default: a temporary one).")
    parser.add_argument("--trials", type=int, default=200, help="Visibility trials.")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "nodes.json")
    args = parser.parse_args()
    data = Path(os.environ.get("KAIROS_DATA_DIR", DEFAULT_DATA.parent)) / "ml-latest-small"
    if not data.is_dir():
        sys.exit(f"needs ml-latest-small at {data}")
    with postgres(args.store_url) as store_url, redis(args.redis_url) as redis_url:
        env = {"KAIROS_STORE_URL": store_url, "KAIROS_REDIS_URL": redis_url}
        result: dict[str, Any] = {}
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            (work / "a").mkdir()
            (work / "b").mkdir()
            subprocess.run(kairos("import", "movielens", "--db", str(work / "a" / "kairos.db"), str(data)), check=True,
                           env={**os.environ, **env}, capture_output=True)
            a = Server(work / "a" / "kairos.db", 1, work / "a.log", env)
            b = Server(work / "b" / "kairos.db", 1, work / "b.log", env)
            try:
                print("visibility, node A -> node B:", flush=True)
                result["visibility"] = visibility_between(a.url, b.url, args.trials)
                print("recommendations at 8 clients, 1 node and 2 nodes:", flush=True)
                result["serving"] = serving(a, b, store_url, work, 20.0)
                print("node A killed under load:", flush=True)
                result["node_loss"] = node_loss(a, b, store_url, 4.0, 6.0)
                print(f"  {json.dumps(result['node_loss'])}", flush=True)
            finally:
                a.stop()
                b.stop()
            result["restart"] = restart(work / "a" / "kairos.db", work / "a-again.log", env, store_url)
            print(f"  node A restarted: {json.dumps(result['restart'])}", flush=True)
    summary = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_info(),
               "command": " ".join(["benchmarks/nodes.py", *sys.argv[1:]]), **result}
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
