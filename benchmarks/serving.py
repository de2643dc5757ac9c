"""Serving benchmark: import, start-up, HTTP ingest rate and recommendation latency.

Reproducible (the demo data is deterministic by seed) and not part of CI. It runs a real
`kairos serve` subprocess on 127.0.0.1 and drives it from this process, so on a small
machine the load generator competes with the server for CPU: read the figures with the
machine's core count in mind.

    .venv/bin/python benchmarks/serving.py                    # MovieLens-1M scale, ~3 min
    .venv/bin/python benchmarks/serving.py --events 50000     # smoke run, < 1 min
    .venv/bin/python benchmarks/serving.py --dataset movielens
    .venv/bin/python benchmarks/serving.py --dataset movielens --behaviour-model --train-set epochs=10

The server never trains on its own during a run (background training would take the
CPU being measured); `--behaviour-model` trains one with `kairos train` first, so the
`sequential` source is part of every request.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from kairos.config import Settings
from kairos.datasets.demo import DemoConfig, generate_demo, import_demo_data
from kairos.engine import Engine

from _machine import machine_info as base_machine_info  # noqa: E402 (a sibling script)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MOVIELENS = ROOT.parent / "shared" / "data" / "ml-latest-small"
HOST = "127.0.0.1"
INGEST_BATCH = 1_000
TARGETS = {
    "import_seconds": 60.0,
    "startup_seconds": 30.0,
    "ingest_events_per_s": 10_000.0,
    "recommend_p99_ms_at_8": 20.0,
}


@dataclass
class Prepared:
    """A database ready to serve, plus what the load needs: known users, new events."""

    dataset: str
    db_path: Path
    import_seconds: float
    generate_seconds: float
    counts: dict[str, int]
    user_ids: list[str]
    ingest_bodies: list[bytes]
    ingest_events: int


@dataclass
class LoadResult:
    clients: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    server_cpu_s: float | None = None
    client_cpu_s: float | None = None

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        per_request = max(self.requests, 1)
        return {
            "clients": self.clients,
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "throughput_rps": round(self.requests / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(float(np.percentile(lat, 50)), 3),
            "p90_ms": round(float(np.percentile(lat, 90)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3),
            "max_ms": round(float(lat.max()), 3),
            "server_cpu_ms_per_request": None if self.server_cpu_s is None
            else round(1000 * self.server_cpu_s / per_request, 3),
            "client_cpu_ms_per_request": None if self.client_cpu_s is None
            else round(1000 * self.client_cpu_s / per_request, 3),
        }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("demo", "movielens", "both"), default="demo")
    parser.add_argument("--users", type=int, default=6_000)
    parser.add_argument("--items", type=int, default=4_000)
    parser.add_argument("--events", type=int, default=1_000_000, help="Events imported.")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--movielens", type=Path, default=DEFAULT_MOVIELENS,
                        help="MovieLens folder for --dataset movielens/both.")
    parser.add_argument("--ingest-events", type=int, default=None,
                        help="New events POSTed (default: a fifth of --events, at most 200k).")
    parser.add_argument("--ingest-clients", type=int, default=2)
    parser.add_argument("--levels", default="1,8,32", help="Concurrent clients per level.")
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds per level.")
    parser.add_argument("--max-requests", type=int, default=200_000,
                        help="Upper bound on requests per level.")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=None,
                        help="Results JSON (default benchmarks/results/serving-<dataset>.json).")
    parser.add_argument("--keep-db", action="store_true", help="Keep the temporary database.")
    parser.add_argument("--behaviour-model", action="store_true",
                        help="Train the behaviour model (kairos train) before the server starts.")
    parser.add_argument("--ranker", action="store_true",
                        help="Also train the ranking model (kairos train --model ranker); implies "
                             "--behaviour-model.")
    parser.add_argument("--compare-ranker", action="store_true",
                        help="Before ingesting, measure recommendations with the ranking model on and "
                             "with KAIROS_RANKER=off, over the same database; implies --ranker.")
    parser.add_argument("--ranker-mode", choices=("auto", "learned"), default="auto",
                        help="KAIROS_RANKER while the ranking model trains: learned serves the LightGBM "
                             "ranker even where fusion measured better, so its cost is what is timed.")
    parser.add_argument("--train-set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="kairos train --set overrides (the cost of a request does not depend "
                             "on how long the model trained).")
    args = parser.parse_args(argv)
    if args.ingest_events is None:
        args.ingest_events = min(200_000, max(INGEST_BATCH, args.events // 5))
    args.levels = [int(level) for level in args.levels.split(",")]
    args.ranker = args.ranker or args.compare_ranker
    args.behaviour_model = args.behaviour_model or args.ranker
    return args


def prepare_demo(args: argparse.Namespace, workdir: Path) -> Prepared:
    """Generate events + ingest events in one time line: the first part is imported, the
    later part is what clients send during the ingest phase (new, later timestamps)."""
    config = DemoConfig(n_users=args.users, n_items=args.items,
                        n_events=args.events + args.ingest_events, seed=args.seed)
    started = time.perf_counter()
    data = generate_demo(config)
    generate_seconds = time.perf_counter() - started
    db_path = workdir / "demo.db"
    engine = Engine(Settings(db_path=db_path))
    report = import_demo_data(engine, data, stop=args.events)
    counts = engine.stats()
    engine.close()
    bodies = [
        json.dumps({"events": [e.model_dump(mode="json", exclude_none=True) for e in batch]})
        .encode()
        for batch in data.iter_event_batches(INGEST_BATCH, start=args.events)
    ]
    events_per_user = np.bincount(data.event_user[: args.events], minlength=len(data.users))
    users = [u.user_id for u, n in zip(data.users, events_per_user, strict=True) if n > 0]
    label = f"demo-{_scale(args.events)}"
    return Prepared(label, db_path, report.import_seconds, generate_seconds,
                    _counts(counts), users, bodies, data.n_events - args.events)


def prepare_movielens(args: argparse.Namespace, workdir: Path) -> Prepared | None:
    """MovieLens through its importer; the ingest phase sends views of known users and
    items with later timestamps (MovieLens has no held-back events to replay)."""
    try:
        from kairos.datasets.movielens import import_movielens
    except ImportError as error:
        print(f"skipping MovieLens: kairos.datasets.movielens unavailable ({error})")
        return None
    if not args.movielens.is_dir():
        print(f"skipping MovieLens: no folder at {args.movielens}")
        return None
    db_path = workdir / "movielens.db"
    engine = Engine(Settings(db_path=db_path))
    started = time.perf_counter()
    import_movielens(engine, args.movielens)
    import_seconds = time.perf_counter() - started
    counts = engine.stats()
    users = sorted(engine.state.users)
    items = list(engine.catalog.ids)
    latest = max((s.recent[-1].timestamp for s in engine.state.users.values() if s.recent),
                 default=time.time())
    engine.close()
    rng = random.Random(args.seed)
    bodies = []
    for b in range(args.ingest_events // INGEST_BATCH):
        base = latest + 60.0 * (b + 1)
        events = [{"user_id": rng.choice(users), "item_id": rng.choice(items), "type": "view",
                   "timestamp": base + i * 0.01} for i in range(INGEST_BATCH)]
        bodies.append(json.dumps({"events": events}).encode())
    return Prepared(args.movielens.name, db_path, import_seconds, 0.0, _counts(counts), users,
                    bodies, len(bodies) * INGEST_BATCH)


def _counts(stats: dict[str, Any]) -> dict[str, int]:
    return {key: int(stats[key]) for key in ("items", "users", "events")}


def _scale(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1_000}k"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def kairos_command() -> list[str]:
    script = Path(sys.executable).with_name("kairos")
    return [str(script)] if script.exists() else [sys.executable, "-m", "kairos"]


class Server:
    """`kairos serve` on 127.0.0.1, stopped (and waited for) whatever happens."""

    def __init__(self, db_path: Path, log_path: Path, env: dict[str, str] | None = None,
                 port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = log_path.open("ab")
        self.process = subprocess.Popen(
            [*kairos_command(), "serve", "--db", str(db_path), "--host", HOST,
             "--port", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "KAIROS_SEQUENTIAL_AUTO_TRAIN": "0", "KAIROS_SEQUENTIAL_RETRAIN_INTERVAL_S": "0",
                 **(env or {})},
        )
        self.log_path = log_path

    def wait_healthy(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n"
                                   f"{self.log_path.read_text(errors='replace')[-3000:]}")
            try:
                response = httpx.get(f"{self.url}/healthz", timeout=1.0)
                if response.status_code == 200:
                    return response.json()  # type: ignore[no-any-return]
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server not healthy after {timeout:.0f}s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process (Linux /proc), to tell server from client load."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_clients(
    clients: int, work: Callable[[httpx.Client, int], tuple[bool, int]], deadline_s: float,
    max_requests: int, server_pid: int | None = None,
) -> LoadResult:
    """`clients` threads, each with its own keep-alive connection, calling `work` until
    the deadline or until max_requests were made in all."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    counter = iter(range(max_requests))
    lock = threading.Lock()
    start_barrier = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def loop(index: int) -> None:
        with httpx.Client(timeout=30.0) as client:
            start_barrier.wait()
            while time.perf_counter() < stop_at[0]:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                began = time.perf_counter()
                ok, _ = work(client, n)
                latencies[index].append((time.perf_counter() - began) * 1000.0)
                if not ok:
                    errors[index] += 1

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    server_cpu = process_cpu_seconds(server_pid) if server_pid else None
    client_cpu = time.process_time()
    stop_at[0] = time.perf_counter() + deadline_s
    started = time.perf_counter()
    start_barrier.wait()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    client_cpu = time.process_time() - client_cpu
    server_after = process_cpu_seconds(server_pid) if server_pid else None
    flat = [x for chunk in latencies for x in chunk]
    return LoadResult(
        clients, len(flat), sum(errors), seconds, flat,
        server_after - server_cpu if server_cpu is not None and server_after is not None
        else None,
        client_cpu,
    )


def ingest_phase(server: Server, prepared: Prepared, clients: int) -> dict[str, Any]:
    bodies = prepared.ingest_bodies
    accepted = [0] * len(bodies)

    def post(client: httpx.Client, n: int) -> tuple[bool, int]:
        response = client.post(f"{server.url}/v1/events", content=bodies[n],
                               headers={"content-type": "application/json"})
        if response.status_code == 200:
            accepted[n] = int(response.json()["accepted"])
        return response.status_code == 200, accepted[n]

    result = run_clients(clients, post, deadline_s=600.0, max_requests=len(bodies),
                         server_pid=server.process.pid)
    events = sum(accepted)
    return {
        "events": events,
        "batch_size": INGEST_BATCH,
        "events_per_s": round(events / result.seconds, 1) if result.seconds else 0.0,
        "batch": result.summary(),
    }


def recommend_phase(server: Server, users: list[str], levels: list[int], duration: float,
                    max_requests: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    picks = [rng.choice(users) for _ in range(max_requests)]

    def get(client: httpx.Client, n: int) -> tuple[bool, int]:
        response = client.get(f"{server.url}/v1/recommendations/{picks[n]}", params={"n": 10})
        return response.status_code == 200 and bool(response.json()["items"]), 1

    run_clients(min(levels), get, deadline_s=min(2.0, duration), max_requests=max_requests)
    pid = server.process.pid
    return [run_clients(level, get, duration, max_requests, pid).summary() for level in levels]


def machine_info() -> dict[str, Any]:
    return base_machine_info()


def train_behaviour_model(prepared: Prepared, overrides: list[str]) -> dict[str, Any]:
    """`kairos train` on the imported database; what it published."""
    command = [*kairos_command(), "train", "--db", str(prepared.db_path), "--json"]
    for override in overrides:
        command += ["--set", override]
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True, check=True)
    published = [json.loads(line) for line in finished.stdout.splitlines() if line.startswith('{"published"')]
    if not published:
        raise RuntimeError(f"kairos train published nothing:\n{finished.stdout[-2000:]}{finished.stderr[-2000:]}")
    print(f"[{prepared.dataset}] trained {published[-1]['published']} in {time.perf_counter() - started:.0f}s",
          flush=True)
    return {"version": published[-1]["published"], "overrides": overrides,
            "seconds": round(time.perf_counter() - started, 1)}


def train_ranking_model(prepared: Prepared, mode: str) -> dict[str, Any]:
    """`kairos train --model ranker` beside the behaviour model just trained."""
    command = [*kairos_command(), "train", "--db", str(prepared.db_path), "--model", "ranker", "--json"]
    finished = subprocess.run(command, capture_output=True, text=True, check=True,
                              env={**os.environ, "KAIROS_RANKER": mode})
    published = [json.loads(line) for line in finished.stdout.splitlines() if line.startswith('{"published"')]
    if not published:
        raise RuntimeError(f"kairos train --model ranker published nothing:\n{finished.stderr[-2000:]}")
    summary = {"version": published[-1]["published"], **published[-1]["ranking"]}
    print(f"[{prepared.dataset}] ranking model {summary['version']}: {summary['mode']}", flush=True)
    return summary


def ranker_comparison(prepared: Prepared, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The recommendation levels with the ranking model served and with KAIROS_RANKER=off,
    one fresh server each over the same database (nothing ingested in between)."""
    measured: dict[str, Any] = {}
    for label, env in (("ranker_on", {}), ("ranker_off", {"KAIROS_RANKER": "off"})):
        server = Server(prepared.db_path, workdir / f"{prepared.dataset}-{label}.log", env=env)
        try:
            server.wait_healthy(args.startup_timeout)
            ranking = httpx.get(f"{server.url}/v1/models", timeout=10.0).json().get("ranking")
            levels = recommend_phase(server, prepared.user_ids, args.levels, args.duration,
                                     args.max_requests, args.seed)
        finally:
            server.stop()
        measured[label] = {"ranking_mode": (ranking or {}).get("mode") if env == {} else "off",
                           "recommendations": levels}
        print(f"[{prepared.dataset}] {label}: " + ", ".join(
            f"{r['clients']} clients p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms" for r in levels), flush=True)
    return measured


def benchmark(prepared: Prepared, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    model = train_behaviour_model(prepared, args.train_set) if args.behaviour_model else None
    ranking = train_ranking_model(prepared, args.ranker_mode) if args.ranker else None
    comparison = ranker_comparison(prepared, args, workdir) if args.compare_ranker else None
    server_started = time.perf_counter()
    server = Server(prepared.db_path, workdir / f"{prepared.dataset}-server.log")
    try:
        health = server.wait_healthy(args.startup_timeout)
        startup = time.perf_counter() - server_started
        print(f"[{prepared.dataset}] server healthy after {startup:.1f}s "
              f"(state rebuilt in {health.get('rebuild_seconds', 0):.1f}s)", flush=True)
        ingest = ingest_phase(server, prepared, args.ingest_clients)
        print(f"[{prepared.dataset}] ingested {ingest['events']:,} events at "
              f"{ingest['events_per_s']:,.0f}/s", flush=True)
        levels = recommend_phase(server, prepared.user_ids, args.levels, args.duration,
                                 args.max_requests, args.seed)
        after = httpx.get(f"{server.url}/healthz", timeout=10.0).json()
        served = httpx.get(f"{server.url}/v1/models", timeout=10.0).json()["model_version"]
    finally:
        server.stop()
    if model is not None and not served.endswith(model["version"]):
        raise RuntimeError(f"the server answered as {served}, not with {model['version']}")
    return {
        "dataset": prepared.dataset,
        "model_version": served,
        "behaviour_model": model,
        "ranking_model": ranking,
        "ranker_comparison": comparison,
        "counts_imported": prepared.counts,
        "counts_after_ingest": _counts(after),
        "generate_seconds": round(prepared.generate_seconds, 2),
        "import_seconds": round(prepared.import_seconds, 2),
        "import_events_per_s": round(prepared.counts["events"] / prepared.import_seconds, 1),
        "startup_seconds": round(startup, 2),
        "rebuild_seconds": health.get("rebuild_seconds"),
        "ingest": ingest,
        "recommendations": levels,
    }


def markdown(result: dict[str, Any]) -> str:
    counts = result["counts_imported"]
    ingest = result["ingest"]
    at_8 = next((r for r in result["recommendations"] if r["clients"] == 8), None)
    lines = [
        f"### {result['dataset']}: {counts['users']:,} users, {counts['items']:,} items, "
        f"{counts['events']:,} events",
        "",
        f"Served as `{result['model_version']}`.",
        "",
        "| measure | value | target |",
        "| --- | --- | --- |",
        f"| import (Engine, SQLite FULL sync) | {result['import_seconds']:.1f} s "
        f"({result['import_events_per_s']:,.0f} events/s) | ≤ {TARGETS['import_seconds']:.0f} s |",
        f"| server start-up to /healthz | {result['startup_seconds']:.1f} s "
        f"(rebuild {result['rebuild_seconds']} s) | ≤ {TARGETS['startup_seconds']:.0f} s |",
        f"| HTTP ingest, batches of {ingest['batch_size']:,}, {result['ingest_clients']} clients "
        f"| {ingest['events_per_s']:,.0f} events/s (batch p50 {ingest['batch']['p50_ms']:.1f} ms,"
        f" p99 {ingest['batch']['p99_ms']:.1f} ms) | ≥ {TARGETS['ingest_events_per_s']:,.0f}/s |",
        "",
        "| clients | requests | errors | req/s | p50 ms | p90 ms | p99 ms | max ms "
        "| server CPU ms/req | client CPU ms/req |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["recommendations"]:
        lines.append(f"| {r['clients']} | {r['requests']:,} | {r['errors']} | "
                     f"{r['throughput_rps']:,.0f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['max_ms']:.1f} | "
                     f"{_ms(r['server_cpu_ms_per_request'])} | "
                     f"{_ms(r['client_cpu_ms_per_request'])} |")
    comparison = result.get("ranker_comparison")
    if comparison:
        lines += ["", f"Ranking model {comparison['ranker_on']['ranking_mode']} against KAIROS_RANKER=off "
                  "(before the ingest phase):", "",
                  "| clients | on req/s | on p50 ms | on p99 ms | off req/s | off p50 ms | off p99 ms |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for on, off in zip(comparison["ranker_on"]["recommendations"],
                           comparison["ranker_off"]["recommendations"], strict=True):
            lines.append(f"| {on['clients']} | {on['throughput_rps']:,.0f} | {on['p50_ms']:.2f} | "
                         f"{on['p99_ms']:.2f} | {off['throughput_rps']:,.0f} | {off['p50_ms']:.2f} | "
                         f"{off['p99_ms']:.2f} |")
    if at_8:
        lines += ["", f"Target p99 ≤ {TARGETS['recommend_p99_ms_at_8']:.0f} ms at 8 clients: "
                  f"{'met' if at_8['p99_ms'] <= TARGETS['recommend_p99_ms_at_8'] else 'missed'}"
                  f" ({at_8['p99_ms']:.1f} ms)."]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine_info()
    note = (f"Load generator and server share this machine ({info['cpu_count']} CPUs): "
            "client CPU time competes with the server, so latency and throughput are "
            "pessimistic on small machines.")
    print(note, flush=True)
    command = " ".join(shlex.quote(part) for part in [sys.executable, *sys.argv])
    workdir = Path(tempfile.mkdtemp(prefix="kairos-bench-"))
    status = 0
    try:
        preparers: list[Callable[[argparse.Namespace, Path], Prepared | None]] = []
        if args.dataset in ("demo", "both"):
            preparers.append(prepare_demo)
        if args.dataset in ("movielens", "both"):
            preparers.append(prepare_movielens)
        for prepare in preparers:
            prepared = prepare(args, workdir)
            if prepared is None:
                continue
            print(f"[{prepared.dataset}] imported {prepared.counts['events']:,} events in "
                  f"{prepared.import_seconds:.1f}s", flush=True)
            result = benchmark(prepared, args, workdir)
            result["ingest_clients"] = args.ingest_clients
            document = {
                "benchmark": "serving",
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": command,
                "machine": info,
                "note": note,
                "targets": TARGETS,
                **result,
            }
            print()
            print(markdown(result))
            print()
            out = args.out or ROOT / "benchmarks" / "results" / f"serving-{prepared.dataset}.json"
            if args.out and args.dataset == "both":
                out = out.with_name(f"{out.stem}-{prepared.dataset}{out.suffix}")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(document, indent=2) + "\n")
            print(f"results written to {out}")
            compared = [r for side in (result["ranker_comparison"] or {}).values() for r in side["recommendations"]]
            if any(r["errors"] for r in result["recommendations"] + compared):
                status = 1
    finally:
        if args.keep_db:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
