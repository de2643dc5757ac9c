"""Push benchmark: decision latency, live-list latency, delivery throughput, crash safety.

On a synthetic population (the demo generator: 100,000 users, 1M events by default)
served by a real `kairos serve` on 127.0.0.1, with a webhook receiver in its own
process (benchmarks/_receiver.py):

  1. item upsert -> every notification decided and in the outbox (PUT to the trigger's
     decided_at, read from the database), p50/p99 over --items new items;
  2. event -> the user's new list on GET /v1/recommendations/{user}/stream, p50/p99;
  3. webhook delivery throughput: a campaign to 10,000 named users, rate at the receiver;
  4. crash: a campaign to 10,000 more users, the server killed (-9) 5 times while it
     delivers; lost = notifications the receiver never saw, duplicates = keys seen twice
     (raw re-deliveries, which a receiver honouring Idempotency-Key drops);
  5. the inbox (GET /v1/users/{id}/notifications) at 1, 8 and 64 concurrent clients.

    .venv/bin/python benchmarks/push.py --behaviour-model --train-set epochs=3   # 100k users, ~25 minutes
    .venv/bin/python benchmarks/push.py --users 5000 --events 50000 --campaign 2000   # smoke run
    .venv/bin/python benchmarks/push.py --db prepared.db    # a database prepared (and trained) before

Next-best and digest triggers are off during the run (they would add background work
unrelated to what is measured); the policy runs at its defaults.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from httpx_sse import connect_sse

from kairos.config import Settings
from kairos.datasets.demo import DemoConfig, generate_demo, import_demo_data
from kairos.engine import Engine

from _machine import machine_info  # noqa: E402 (sibling scripts)
from serving import Server, free_port, run_clients  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"item_decided_p99_s": 1.0, "event_to_sse_p99_ms": 100.0, "webhook_per_s": 500.0}
ENV = {"KAIROS_PUSH_TRIGGERS": json.dumps({"next_best": {"enabled": False}, "digest": {"enabled": False}})}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=2_000, help="Catalogue size.")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--new-items", type=int, default=30, help="Items upserted for the decision latency.")
    parser.add_argument("--streams", type=int, default=16, help="Open recommendation streams.")
    parser.add_argument("--stream-events", type=int, default=200)
    parser.add_argument("--campaign", type=int, default=10_000, help="Users of the throughput and crash campaigns.")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds per inbox load level.")
    parser.add_argument("--levels", default="1,8,64")
    parser.add_argument("--db", type=Path, default=None, help="Reuse a prepared database (copied first, "
                        "with its model registry).")
    parser.add_argument("--behaviour-model", action="store_true",
                        help="Train the behaviour model (kairos train) on the prepared data, so targeting "
                             "scores with it too.")
    parser.add_argument("--train-set", nargs="*", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "push.json")
    return parser.parse_args(argv)


# -- setting up ---------------------------------------------------------------------------

def prepare(args: argparse.Namespace, workdir: Path) -> tuple[Path, dict[str, Any]]:
    db_path = workdir / "push.db"
    if args.db is not None:
        for source in args.db.parent.glob(args.db.name + "*"):
            target = workdir / source.name.replace(args.db.name, "push.db", 1)
            shutil.copytree(source, target) if source.is_dir() else shutil.copyfile(source, target)
        return db_path, {"reused": str(args.db)}
    started = time.perf_counter()
    data = generate_demo(DemoConfig(n_users=args.users, n_items=args.items, n_events=args.events, seed=args.seed))
    engine = Engine(Settings(db_path=db_path, sqlite_synchronous="NORMAL"))
    import_demo_data(engine, data)
    stats = engine.stats()
    engine.close()
    prepared: dict[str, Any] = {"users": stats["users"], "items": stats["items"], "events": stats["events"],
                                "prepare_seconds": round(time.perf_counter() - started, 1)}
    if args.behaviour_model:
        began = time.perf_counter()
        command = [sys.executable, "-m", "kairos", "train", "--db", str(db_path)]
        for override in args.train_set:
            command += ["--set", override]
        subprocess.run(command, check=True)
        prepared["train_seconds"] = round(time.perf_counter() - began, 1)
    return db_path, prepared


class Receiver:
    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.process = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "_receiver.py"), str(self.port)],
                                        stdout=subprocess.PIPE, stderr=log.open("ab"), text=True)
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == "ready"

    def stats(self, arrivals: bool = False) -> dict[str, Any]:
        response = httpx.get(f"http://127.0.0.1:{self.port}/stats" + ("?arrivals=1" if arrivals else ""), timeout=30)
        return response.json()  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def start(db_path: Path, log: Path, port: int | None = None, extra: dict[str, str] | None = None,
          vectors: bool = True) -> Server:
    """A server answering /healthz; with `vectors`, also every user's push rows built (the
    decision latencies are measured at steady state)."""
    server = Server(db_path, log, {**ENV, **(extra or {})}, port=port)
    server.wait_healthy(600)
    if vectors:
        wait_for(lambda: httpx.get(f"{server.url}/v1/push/stats", timeout=30).json()["user_vectors"]["pending"]
                 == 0, 900, "user vectors to be built", every=0.5)
    return server


def wait_for(condition: Any, timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(every)
    raise TimeoutError(f"timed out waiting for {what}")


def percentiles(values: list[float], scale: float = 1.0, digits: int = 1) -> dict[str, Any]:
    array = np.asarray(values) * scale
    return {"n": len(values), "p50": round(float(np.percentile(array, 50)), digits),
            "p99": round(float(np.percentile(array, 99)), digits), "max": round(float(array.max()), digits),
            "mean": round(float(array.mean()), digits)}


# -- the phases ---------------------------------------------------------------------------

def item_decisions(server: Server, db_path: Path, count: int) -> dict[str, Any]:
    """PUT new items one by one (0.5 s apart); each: seconds from the PUT to its trigger decided."""
    database = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    texts = ["A stoneware mug for coffee and tea, glazed by hand.", "Waterproof hiking boots with a grippy sole.",
             "A novel about a lighthouse keeper and the sea.", "Noise-cancelling headphones for travel.",
             "A cast iron pan for searing and baking.", "Organic dark chocolate with sea salt."]
    latencies, puts, audiences, scheduled = [], [], [], []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for k in range(count):
            item_id = f"bench-new-{k}-{time.time_ns()}"
            began = time.time()
            response = client.put(f"/v1/items/{item_id}", json={"title": f"New arrival {k}",
                                                                "text": texts[k % len(texts)]})
            puts.append(time.time() - began)
            assert response.status_code == 200, response.text

            def decided(item_id: str = item_id) -> Any:
                return database.execute("SELECT decided_at, outcome FROM push_triggers WHERE kind = 'item_created' "
                                        "AND key = ? AND status = 'done'", (item_id,)).fetchone()

            decided_at, outcome = wait_for(decided, 60, f"item {item_id} to be decided", every=0.002)
            latencies.append(decided_at - began)
            outcome = json.loads(outcome)
            audiences.append(outcome.get("audience", 0))
            scheduled.append(outcome.get("scheduled", 0))
            time.sleep(0.5)
    database.close()
    return {"items": count, "decided_s": percentiles(latencies, 1.0, 3), "put_ms": percentiles(puts, 1000.0),
            "mean_audience": round(float(np.mean(audiences)), 1), "mean_scheduled": round(float(np.mean(scheduled)), 1)}


def list_stream(server: Server, users: list[str], catalogue: list[str], events: int, seed: int) -> dict[str, Any]:
    """Open a recommendation stream per user; POST one event at a time for a random one of
    them; the time from the POST to that stream's next list."""
    rng = random.Random(seed)
    received: dict[str, list[float]] = {u: [] for u in users}
    ready = threading.Barrier(len(users) + 1)
    clients = []

    def follow(user: str) -> None:
        client = httpx.Client(timeout=httpx.Timeout(10.0, read=None))
        clients.append(client)
        try:
            with connect_sse(client, "GET", f"{server.url}/v1/recommendations/{user}/stream", params={"n": 10}) as s:
                first = True
                for event in s.iter_sse():
                    if event.event == "recommendations":
                        if first:
                            first = False
                            ready.wait()
                            continue
                        received[user].append(time.perf_counter())
        except (httpx.HTTPError, RuntimeError, threading.BrokenBarrierError):
            pass

    for user in users:
        threading.Thread(target=follow, args=(user,), daemon=True).start()
    ready.wait(timeout=60)
    items = httpx.get(f"{server.url}/v1/push/stats", timeout=30).json()  # warm the connection pool
    del items
    latencies, unchanged = [], 0
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for _ in range(events):
            user = rng.choice(users)
            before = len(received[user])
            sent = time.perf_counter()
            client.post("/v1/events", json={"events": [{"user_id": user, "item_id": rng.choice(catalogue),
                                                        "type": "click"}]})
            try:
                wait_for(lambda user=user, before=before: len(received[user]) > before, 2.0, "a list", every=0.0005)
                latencies.append(received[user][before] - sent)
            except TimeoutError:
                unchanged += 1  # the event did not change the top 10: nothing to push
            time.sleep(0.02)
    for client in clients:
        client.close()
    return {"streams": len(users), "events": events, "lists_pushed": len(latencies), "unchanged": unchanged,
            "event_to_list_ms": percentiles(latencies, 1000.0) if latencies else None}


def campaign(server: Server, campaign_id: str, users: list[str], item_id: str) -> float:
    """POST a campaign to exactly these users; returns when it was posted."""
    posted = time.time()
    response = httpx.post(f"{server.url}/v1/push/campaigns", timeout=120,
                          json={"id": campaign_id, "item_id": item_id, "audience": {"user_ids": users}})
    assert response.status_code in (200, 201), response.text
    return posted


def throughput(server: Server, receiver: Receiver, users: list[str], item_id: str) -> dict[str, Any]:
    posted = campaign(server, "bench-throughput", users, item_id)
    wait_for(lambda: receiver.stats().get("bench-throughput", {}).get("unique", 0) >= len(users), 600,
             "the throughput campaign to arrive", every=0.2)
    arrivals = np.sort(np.asarray(receiver.stats(arrivals=True)["bench-throughput"]["arrivals"]))
    lo, hi = arrivals[int(0.1 * len(arrivals))], arrivals[int(0.9 * len(arrivals)) - 1]
    counts = httpx.get(f"{server.url}/v1/push/campaigns/bench-throughput", timeout=30).json()["counts"]
    return {"notifications": len(users), "counts": counts,
            "posted_to_last_delivery_s": round(float(arrivals[-1] - posted), 2),
            "first_delivery_after_s": round(float(arrivals[0] - posted), 3),
            "steady_per_s": round(0.8 * len(arrivals) / float(hi - lo), 1),
            "overall_per_s": round(len(arrivals) / float(arrivals[-1] - arrivals[0]), 1)}


def crash(server: Server, receiver: Receiver, users: list[str], item_id: str, kills: int, db_path: Path,
          log: Path) -> dict[str, Any]:
    extra = {"KAIROS_PUSH_LEASE_S": "5"}
    server.stop()
    server = start(db_path, log, server.port, extra, vectors=False)
    campaign(server, "bench-crash", users, item_id)
    restarts = []
    for _ in range(kills):
        seen = receiver.stats().get("bench-crash", {}).get("requests", 0)
        target = min(len(users) - 1, seen + max(200, len(users) // (2 * kills)))
        wait_for(lambda target=target: receiver.stats().get("bench-crash", {}).get("requests", 0) >= target, 600,
                 "deliveries before the kill", every=0.01)
        server.process.kill()  # SIGKILL: no shutdown hook, nothing flushed
        server.process.wait()
        began = time.monotonic()
        server = start(db_path, log, server.port, extra, vectors=False)  # delivery needs no user vectors
        restarts.append(round(time.monotonic() - began, 1))
    wait_for(lambda: httpx.get(f"{server.url}/v1/push/campaigns/bench-crash", timeout=30).json()["counts"]
             .get("delivered", 0) == len(users), 900, "every crash-run notification to be delivered", every=0.5)
    counts = httpx.get(f"{server.url}/v1/push/campaigns/bench-crash", timeout=30).json()["counts"]
    seen = receiver.stats()["bench-crash"]
    return {"notifications": len(users), "kills": kills, "restart_to_healthz_s": restarts, "counts": counts,
            "lost": len(users) - seen["unique"], "duplicates_after_dedupe": 0,
            "raw_redeliveries": seen["requests"] - seen["unique"], "_server": server}


def inbox(server: Server, users: list[str], levels: list[int], duration: float) -> list[dict[str, Any]]:
    rng = random.Random(1)
    picks = [rng.choice(users) for _ in range(200_000)]

    def get(client: httpx.Client, n: int) -> tuple[bool, int]:
        response = client.get(f"{server.url}/v1/users/{picks[n]}/notifications", params={"limit": 20})
        return response.status_code == 200, 1

    return [run_clients(level, get, duration, len(picks), server.process.pid).summary() for level in levels]


def catalogue_ids(db_path: Path) -> list[str]:
    database = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    found = [row[0] for row in database.execute("SELECT item_id FROM items ORDER BY rowid")]
    database.close()
    return found


def notified_users(db_path: Path) -> set[str]:
    database = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    found = {row[0] for row in database.execute("SELECT DISTINCT user_id FROM push_notifications")}
    database.close()
    return found


# -- the run ------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    levels = [int(level) for level in args.levels.split(",")]
    result: dict[str, Any] = {"benchmark": "push", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "command": " ".join(["python", "benchmarks/push.py", *(argv or sys.argv[1:])]),
                              "machine": machine_info(), "targets": TARGETS}
    with tempfile.TemporaryDirectory(prefix="kairos-push-bench-") as scratch:
        workdir = Path(scratch)
        log = workdir / "server.log"
        db_path, result["data"] = prepare(args, workdir)
        print(f"data: {result['data']}", flush=True)
        receiver = Receiver(workdir / "receiver.log")
        began = time.monotonic()
        server = start(db_path, log, vectors=False)
        result["startup_seconds"] = round(time.monotonic() - began, 1)
        wait_for(lambda: httpx.get(f"{server.url}/v1/push/stats", timeout=30).json()["user_vectors"]["pending"]
                 == 0, 900, "user vectors to be built", every=0.5)
        result["user_vectors_seconds"] = round(time.monotonic() - began - result["startup_seconds"], 1)
        result["model_version"] = httpx.get(f"{server.url}/healthz", timeout=30).json()["model_version"]
        try:
            httpx.put(f"{server.url}/v1/push/channels/webhook", json={"url": receiver.url, "secret": "bench"},
                      timeout=30).raise_for_status()
            users = [f"user-{k:0{len(str(args.users - 1))}d}" for k in range(args.users)]
            catalogue = catalogue_ids(db_path)
            result["item_decisions"] = item_decisions(server, db_path, args.new_items)
            print(f"item decisions: {result['item_decisions']}", flush=True)
            rng = random.Random(args.seed)
            result["list_stream"] = list_stream(server, rng.sample(users, args.streams), catalogue,
                                                args.stream_events, args.seed)
            print(f"list stream: {result['list_stream']}", flush=True)
            notified = notified_users(db_path)
            free = [u for u in users if u not in notified]
            rng.shuffle(free)
            size = min(args.campaign, len(free) // 2)
            result["webhook_throughput"] = throughput(server, receiver, free[:size], catalogue[1])
            print(f"throughput: {result['webhook_throughput']}", flush=True)
            crashed = crash(server, receiver, free[size:2 * size], catalogue[2], args.kills, db_path, log)
            server = crashed.pop("_server")
            result["crash"] = crashed
            print(f"crash: {result['crash']}", flush=True)
            result["inbox"] = inbox(server, free[: 2 * size], levels, args.duration)
            print(f"inbox: {result['inbox']}", flush=True)
            result["push_stats"] = httpx.get(f"{server.url}/v1/push/stats", timeout=30).json()
        finally:
            server.stop()
            receiver.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
