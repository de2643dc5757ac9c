"""Serving under load, measured with wrk: recommendations at 1, 8 and 64 concurrent
clients, the same server answering an item lookup (the floor under those figures), HTTP
ingest while recommendations are served, and how fast an event written through one
process reaches another process's live stream.

Not part of CI. It needs `wrk` (Debian: `apt-get install wrk`). The database is
ml-latest-small with the behaviour model and the ranking model trained (every default
source on), prepared once into --workdir and reused:

    .venv/bin/python benchmarks/load.py                          # prepare if needed, then measure
    .venv/bin/python benchmarks/load.py --workers 1,2 --duration 10
    .venv/bin/python benchmarks/load.py --phases recommend --workers 2
    .venv/bin/python benchmarks/load.py --phases floor --workers 1,2   # HTTP alone

The load generator (wrk, a few percent of a core) shares the machine with the server.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from _machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-latest-small"
HOST = "127.0.0.1"
INGEST_BATCH = 1_000
TARGETS = {"p99_ms_at_8": 20.0, "p50_ms_at_8": 5.0, "ingest_events_per_s": 20_000.0, "visible_p99_ms": 50.0}

RECOMMEND_LUA = """
local users = {}
for line in io.lines("%(users)s") do users[#users + 1] = line end
math.randomseed(%(seed)d + tonumber(tostring({}):sub(8), 16) %% 100000)
request = function()
  return wrk.format("GET", "/v1/recommendations/" .. users[math.random(#users)] .. "?n=10")
end
"""
ITEM_LUA = """
local items = {}
for line in io.lines("%(items)s") do items[#items + 1] = line end
math.randomseed(%(seed)d + tonumber(tostring({}):sub(8), 16) %% 100000)
request = function()
  return wrk.format("GET", "/v1/items/" .. items[math.random(#items)])
end
"""
INGEST_LUA = """
local bodies = {}
for line in io.lines("%(bodies)s") do bodies[#bodies + 1] = line end
local next_body = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  next_body = next_body %% #bodies + 1
  return wrk.format(nil, "/v1/events", nil, bodies[next_body])
end
"""
REPORT_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%d %%.6f %%.3f %%.3f %%.3f %%.3f\\n", summary.requests,
    e.connect + e.read + e.write + e.timeout, e.status, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000))
end
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MovieLens folder.")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "load",
                        help="Where the prepared database is kept between runs.")
    parser.add_argument("--epochs", type=int, default=10,
                        help="Behaviour-model epochs (a request's cost does not depend on them).")
    parser.add_argument("--workers", default="1,2", help="`kairos serve --workers` values measured.")
    parser.add_argument("--levels", default="1,8,64", help="Concurrent clients.")
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds per measurement.")
    parser.add_argument("--phases", default="cpu,floor,recommend,ingest,visibility")
    parser.add_argument("--visibility-trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--env", nargs="*", default=[], metavar="NAME=VALUE",
                        help="Extra settings for the servers, e.g. KAIROS_RANKER=off.")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "load.json")
    parser.add_argument("--profile", type=Path, default=None, metavar="PATH",
                        help="cpu phase: write a cProfile of one more warm pass (learned ranker) to PATH "
                             "and print its costliest functions.")
    args = parser.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",")]
    args.levels = [int(c) for c in args.levels.split(",")]
    args.phases = set(args.phases.split(","))
    return args


def kairos(*arguments: str) -> list[str]:
    script = Path(sys.executable).with_name("kairos")
    return [str(script) if script.exists() else sys.executable, *([] if script.exists() else ["-m", "kairos"]),
            *arguments]


def prepare(args: argparse.Namespace) -> Path:
    """ml-latest-small imported, the behaviour model and the ranking model trained (once)."""
    db = args.workdir / "ml.db"
    done = args.workdir / "prepared.json"
    if done.exists():
        return db
    args.workdir.mkdir(parents=True, exist_ok=True)
    for path in args.workdir.glob("ml.db*"):
        subprocess.run(["rm", "-rf", str(path)], check=True)
    steps = [kairos("import", "movielens", "--db", str(db), str(args.data)),
             kairos("train", "--db", str(db), "--set", f"epochs={args.epochs}"),
             kairos("train", "--db", str(db), "--model", "ranker"),
             # Fitted now, or each server would fit it in the background while measured.
             kairos("push", "calibrate", "--db", str(db))]
    for step in steps:
        print("$", shlex.join(step), flush=True)
        subprocess.run(step, check=True)
    done.write_text(json.dumps({"prepared": datetime.now(UTC).isoformat(timespec="seconds")}))
    return db


def copy_database(source: Path, target: Path) -> None:
    import shutil
    import sqlite3

    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    shutil.copytree(f"{source}.models", f"{target}.models")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Server:
    """`kairos serve` in its own process group, stopped whatever happens."""

    def __init__(self, db: Path, workers: int, log: Path, env: dict[str, str]) -> None:
        self.workers = workers
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            kairos("serve", "--db", str(db), "--port", str(self.port), "--workers", str(workers)),
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "KAIROS_SEQUENTIAL_AUTO_TRAIN": "false",
                 "KAIROS_SEQUENTIAL_RETRAIN_INTERVAL_S": "0", **env})
        started = time.monotonic()
        while time.monotonic() - started < 300:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: see {log}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        self.startup_s = time.monotonic() - started

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


def wrk(url: str, script: Path, clients: int, seconds: float) -> dict[str, Any]:
    threads = min(clients, 4)
    output = subprocess.run(["wrk", f"-t{threads}", f"-c{clients}", f"-d{seconds:g}s", "--timeout", "10s",
                             "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    found = re.search(r"RESULT (\S+) (\S+) (\S+) (\S+) (\S+) (\S+) (\S+) (\S+)", output)
    if found is None:
        raise RuntimeError(f"wrk said:\n{output}")
    requests, errors, bad_status, duration, p50, p90, p99, top = (float(x) for x in found.groups())
    return {"clients": clients, "requests": int(requests), "errors": int(errors + bad_status),
            "rps": round(requests / duration, 1), "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "max_ms": top}


def scripts(args: argparse.Namespace, db: Path) -> tuple[Path, Path, Path]:
    """The wrk scripts and their data: known users; batches of views of known items;
    known items, one looked up per request."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        users = [row[0] for row in conn.execute("SELECT DISTINCT user_id FROM events")]
        items = [row[0] for row in conn.execute("SELECT item_id FROM items")]
        latest = conn.execute("SELECT max(ts) FROM events").fetchone()[0]
    users_file, bodies_file = args.workdir / "users.txt", args.workdir / "bodies.jsonl"
    users_file.write_text("\n".join(users) + "\n")
    items_file = args.workdir / "items.txt"
    items_file.write_text("\n".join(items) + "\n")
    rng = random.Random(args.seed)
    with bodies_file.open("w") as out:
        for b in range(200):
            events = [{"user_id": rng.choice(users), "item_id": rng.choice(items), "type": "view",
                       "timestamp": latest + 60.0 * b + i * 0.01} for i in range(INGEST_BATCH)]
            out.write(json.dumps({"events": events}, separators=(",", ":")) + "\n")
    recommend = args.workdir / "recommend.lua"
    recommend.write_text(RECOMMEND_LUA % {"users": users_file, "seed": args.seed} + REPORT_LUA % {})
    ingest = args.workdir / "ingest.lua"
    ingest.write_text(INGEST_LUA % {"bodies": bodies_file} + REPORT_LUA % {})
    item = args.workdir / "item.lua"
    item.write_text(ITEM_LUA % {"items": items_file, "seed": args.seed} + REPORT_LUA % {})
    return recommend, ingest, item


def floor_phase(server: Server, script: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """`GET /v1/items/{id}` (a lookup in memory) through the same server, middleware
    and connections: what a request costs before any recommendation work, the floor
    under every latency the recommend phase measures."""
    wrk(server.url, script, 8, 3)
    rows = []
    for clients in args.levels:
        row = wrk(server.url, script, clients, args.duration)
        print(f"  item lookup, {clients:>3} clients: {row['rps']:>7,.0f} req/s  p50 {row['p50_ms']:6.2f}  "
              f"p99 {row['p99_ms']:7.2f} ms  errors {row['errors']}", flush=True)
        rows.append(row)
    return rows


def recommend_phase(server: Server, script: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    # Warm-up long enough that every process has served every user a few times: what is
    # computed once per event (the behaviour model's query, the ALS fold-in, the semantic
    # search) is then computed, as for a user who comes back without a new event. The
    # first request after an event pays for it: the ingest phase measures requests while
    # events arrive.
    wrk(server.url, script, 8, 15)
    rows = []
    for clients in args.levels:
        row = wrk(server.url, script, clients, args.duration)
        print(f"  {clients:>3} clients: {row['rps']:>7,.0f} req/s  p50 {row['p50_ms']:6.2f}  "
              f"p90 {row['p90_ms']:6.2f}  p99 {row['p99_ms']:7.2f} ms  errors {row['errors']}", flush=True)
        rows.append(row)
    return rows


def ingest_phase(server: Server, recommend: Path, ingest: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Batches of 1,000 events from 2 connections: alone, then while 8 clients ask for
    recommendations (closed loop: they take whatever CPU the ingest leaves)."""
    alone = wrk(server.url, ingest, 2, args.duration)
    print(f"  ingest alone {alone['rps'] * INGEST_BATCH:,.0f} events/s (batch p50 {alone['p50_ms']:.1f} ms, "
          f"p99 {alone['p99_ms']:.1f} ms)", flush=True)
    results: dict[str, Any] = {}

    def run(name: str, script: Path, clients: int) -> None:
        results[name] = wrk(server.url, script, clients, args.duration)

    threads = [threading.Thread(target=run, args=("ingest", ingest, 2)),
               threading.Thread(target=run, args=("recommend", recommend, 8))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batches = results["ingest"]
    events_per_s = batches["rps"] * INGEST_BATCH
    print(f"  ingest {events_per_s:,.0f} events/s (batch p50 {batches['p50_ms']:.1f} ms, p99 "
          f"{batches['p99_ms']:.1f} ms) while recommendations p50 {results['recommend']['p50_ms']:.2f} "
          f"p99 {results['recommend']['p99_ms']:.2f} ms at {results['recommend']['rps']:,.0f} req/s", flush=True)
    return {"events_per_s_alone": round(alone["rps"] * INGEST_BATCH), "batch_alone": alone,
            "events_per_s": round(events_per_s), "batch": batches, "recommend_at_8": results["recommend"]}


def visibility_phase(db: Path, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """Two servers over one database (as two nodes of one machine would be)."""
    a = Server(db, 1, args.workdir / "visibility-a.log", env)
    b = Server(db, 1, args.workdir / "visibility-b.log", env)
    try:
        return visibility_between(a.url, b.url, args.visibility_trials)
    finally:
        a.stop()
        b.stop()


def visibility_between(a_url: str, b_url: str, trials: int) -> dict[str, Any]:
    """An event posted to A, the time until B's live stream of that user's list sends a
    new list — B learns of it by following the log, with no request of its own."""
    from httpx_sse import connect_sse

    delays: list[float] = []
    with httpx.Client(base_url=a_url, timeout=10.0) as writer, httpx.Client(timeout=30.0) as reader:
        for trial in range(trials):
            user = f"visibility-{os.getpid()}-{time.time_ns()}-{trial}"
            with connect_sse(reader, "GET", f"{b_url}/v1/recommendations/{user}/stream?n=5") as source:
                events = source.iter_sse()
                now = next(event for event in events if event.event == "recommendations")  # the list now
                # A click on its first item: seen items are excluded, so the list must change.
                item = json.loads(now.data)["items"][0]["item_id"]
                sent = time.perf_counter()
                writer.post("/v1/events", json={"events": [{"user_id": user, "item_id": item,
                                                            "type": "click"}]}).raise_for_status()
                for event in events:
                    if event.event == "recommendations":
                        delays.append((time.perf_counter() - sent) * 1000.0)
                        break
    delays.sort()

    def pct(q: float) -> float:
        return round(delays[min(len(delays) - 1, int(q * len(delays)))], 2)

    result = {"trials": len(delays), "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": round(delays[-1], 2)}
    print(f"  event via A -> B's live stream: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms "
          f"({result['trials']} trials)", flush=True)
    return result


def cpu_phase(db: Path, args: argparse.Namespace) -> dict[str, Any]:
    """In process, CPU time of one Engine.recommend (n=10) for every user: the first pass
    computes what is kept per event (cold), the second reads it (warm); with the ranking
    model served and with KAIROS_RANKER=off."""
    from kairos.api.workers import single_threaded_kernels
    from kairos.config import Settings
    from kairos.engine import Engine

    single_threaded_kernels()
    result: dict[str, Any] = {}
    for label, overrides in (("ranker", {}), ("ranker_off", {"ranker": "off"})):
        engine = Engine(Settings(db_path=db, sequential_auto_train=False, **overrides))
        users = sorted(engine.state.users)
        passes = []
        for _ in range(2):
            started = time.process_time()
            for user in users:
                engine.recommend(user, 10)
            passes.append(round((time.process_time() - started) / len(users) * 1000, 3))
        if args.profile is not None and not overrides:
            profile_warm_pass(engine, users, args.profile)
        served = engine.ranking.mode if engine.ranking is not None else "configured"
        result[label] = {"mode": "off" if overrides else served,
                         "cold_ms": passes[0], "warm_ms": passes[1], "users": len(users)}
        engine.close(save_vectors=False)
        print(f"  {label}: cold {passes[0]:.2f} ms, warm {passes[1]:.2f} ms CPU per request", flush=True)
    return result


def profile_warm_pass(engine: Any, users: list[str], path: Path) -> None:
    """Where a warm request's CPU goes: shares, not times (the profiler slows every call)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for user in users:
        engine.recommend(user, 10)
    profiler.disable()
    profiler.dump_stats(str(path))
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(r"kairos", 25)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    db = prepare(args)
    recommend, ingest, item = scripts(args, db)
    env = dict(item.split("=", 1) for item in args.env)
    document: dict[str, Any] = {
        "benchmark": "load", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]), "machine": machine_info(), "targets": TARGETS,
        "dataset": args.data.name, "env": env, "runs": [],
    }
    if "cpu" in args.phases:
        print("CPU per request, in process", flush=True)
        document["cpu"] = cpu_phase(db, args)
    for workers in args.workers:
        if not args.phases & {"floor", "recommend", "ingest"}:
            break
        print(f"--workers {workers}", flush=True)
        # A copy per run: the ingest phase adds events, and each run starts from the same log.
        copy = args.workdir / f"run-{workers}.db"
        for path in args.workdir.glob(f"run-{workers}.db*"):
            subprocess.run(["rm", "-rf", str(path)], check=True)
        copy_database(db, copy)
        server = Server(copy, workers, args.workdir / f"server-{workers}.log", env)
        run: dict[str, Any] = {"workers": workers, "startup_s": round(server.startup_s, 2)}
        try:
            if "floor" in args.phases:
                run["floor"] = floor_phase(server, item, args)
            if "recommend" in args.phases:
                run["recommend"] = recommend_phase(server, recommend, args)
            if "ingest" in args.phases:
                run["ingest"] = ingest_phase(server, recommend, ingest, args)
        finally:
            server.stop()
        document["runs"].append(run)
    if "visibility" in args.phases:
        print("visibility across processes", flush=True)
        document["visibility"] = visibility_phase(args.workdir / f"run-{args.workers[-1]}.db", args, env)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results written to {args.out}")
    errors = sum(row["errors"] for run in document["runs"] for row in run.get("recommend", []))
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
