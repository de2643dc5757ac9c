"""The generative model on the serving path: event -> the model's list served, and what
it costs requests, under load.

Builds a demo database (deterministic by seed), starts a real `kairos serve` on
127.0.0.1 with KAIROS_LLM=local (the packaged SmolLM2-135M unless KAIROS_LLM_PATH says
otherwise), waits for the model, then measures:

1. one user at a time: post an event, poll the user's recommendations until an item
   carries "llm" in its sources (event -> the model's list served), p50/p99;
2. a burst: events of `--burst` users at once, each user's time until their list
   carries it (the coalescing queue in action);
3. GET /v1/recommendations at 1, 8 and 64 concurrent clients while events keep the
   model busy, against the same server started with KAIROS_LLM=off.

    .venv/bin/python benchmarks/llm_latency.py [--mode rerank|generate]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
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

from kairos.config import Settings
from kairos.datasets.demo import DemoConfig, generate_demo, import_demo_data
from kairos.engine import Engine

from _machine import machine_info  # noqa: E402 (a sibling script)

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {"n": len(ms), **{f"p{q}": round(float(np.percentile(ms, q)), 1) for q in (50, 90, 99)}} if len(ms) \
        else {"n": 0}


class Server:
    def __init__(self, db: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kairos", "serve", "--db", str(db), "--port", str(self.port)],
            env={**os.environ, "KAIROS_PUSH_ENABLED": "false", "KAIROS_SEQUENTIAL_AUTO_TRAIN": "false", **env},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("the server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def until_llm(client: httpx.Client, user: str, started: float, timeout: float = 120.0) -> float | None:
    while time.monotonic() - started < timeout:
        items = client.get(f"/v1/recommendations/{user}", params={"n": 10}).json()["items"]
        if any("llm" in item["sources"] for item in items):
            return time.monotonic() - started
        time.sleep(0.02)
    return None


def post_event(client: httpx.Client, user: str, item: str) -> None:
    response = client.post("/v1/events", json={"events": [{"user_id": user, "item_id": item, "type": "click"}]})
    response.raise_for_status()


async def load(url: str, clients: int, seconds: float, users: list[str]) -> dict[str, Any]:
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def one(k: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            i = k
            while time.monotonic() < stop:
                began = time.perf_counter()
                response = await client.get(f"/v1/recommendations/{users[i % len(users)]}", params={"n": 10})
                latencies.append(time.perf_counter() - began)
                assert response.status_code == 200
                i += clients

    await asyncio.gather(*(one(k) for k in range(clients)))
    return {**percentiles(latencies), "rps": round(len(latencies) / seconds, 1)}


def keep_busy(url: str, users: list[str], items: list[str], stop: threading.Event) -> None:
    """An event every 0.5 s from a different user: the model always has work."""
    with httpx.Client(base_url=url, timeout=30) as client:
        k = 0
        while not stop.is_set():
            post_event(client, users[k % len(users)], items[k % len(items)])
            k += 1
            stop.wait(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("rerank", "generate"), default="rerank")
    parser.add_argument("--single", type=int, default=30, help="Users measured one at a time.")
    parser.add_argument("--burst", type=int, default=16)
    parser.add_argument("--levels", default="1,8,64")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "llm_latency.json")
    args = parser.parse_args()
    result: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "machine": machine_info(), "mode": args.mode,
                              "command": "benchmarks/llm_latency.py " + " ".join(sys.argv[1:])}
    with tempfile.TemporaryDirectory(prefix="kairos-llm-bench-") as scratch:
        db = Path(scratch) / "llm.db"
        engine = Engine(Settings(db_path=db, sqlite_synchronous="NORMAL"))
        demo = generate_demo(DemoConfig(n_users=400, n_items=300, n_events=20_000, seed=11))
        import_demo_data(engine, demo, quiet=True)
        users = sorted(engine.state.users)[:200]
        items = engine.catalog.ids[:100]
        engine.close()
        levels = [int(x) for x in args.levels.split(",")]
        for setting in ("on", "off"):
            env = {"KAIROS_LLM": "local" if setting == "on" else "off", "KAIROS_LLM_MODE": args.mode}
            started = time.monotonic()
            server = Server(db, env)
            try:
                with httpx.Client(base_url=server.url, timeout=30) as client:
                    if setting == "on":
                        while client.get("/v1/models").json()["language_model"]["state"] != "ready":
                            time.sleep(0.2)
                        result["model_ready_s"] = round(time.monotonic() - started, 1)
                        single = []
                        for k in range(args.single):
                            began = time.monotonic()
                            post_event(client, users[k], items[k])
                            took = until_llm(client, users[k], began)
                            if took is not None:
                                single.append(took)
                        result["event_to_llm_list_one_at_a_time_ms"] = percentiles(single)
                        burst_users = users[args.single:args.single + args.burst]
                        began = time.monotonic()
                        for k, user in enumerate(burst_users):
                            post_event(client, user, items[k])
                        waits = [w for w in (until_llm(client, u, began) for u in burst_users) if w is not None]
                        result["event_to_llm_list_burst_ms"] = {"users": len(burst_users), **percentiles(waits)}
                        result["server_side"] = client.get("/v1/models").json()["language_model"]
                stop = threading.Event()
                busy = threading.Thread(target=keep_busy, args=(server.url, users[100:], items, stop))
                busy.start()
                try:
                    result[f"requests_llm_{setting}"] = {
                        str(level): asyncio.run(load(server.url, level, args.seconds, users)) for level in levels}
                finally:
                    stop.set()
                    busy.join()
            finally:
                server.stop()
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
