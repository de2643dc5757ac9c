"""Start-up of a big store: replaying the whole log against starting from a snapshot.

A generated shop (`kairos.datasets.demo`) of --events events is imported once into
--workdir; then `kairos serve` starts on it three times: with snapshots off (the whole
log replayed), once more to write the snapshot (its first after a replay), and again to
start from it. Timed: process start to the first `/healthz` answer.

    .venv/bin/python benchmarks/startup.py                  # 1M events
    .venv/bin/python benchmarks/startup.py --events 200000
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _machine import machine_info  # noqa: E402
from _shop import imported_shop  # noqa: E402
from load import Server  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "startup")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "startup.json")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    db = args.workdir / f"shop-{args.events}.db"
    imported_shop(db, args.users, args.items, args.events)
    snapshot = db.with_name(db.name + ".snapshot")
    snapshot.unlink(missing_ok=True)
    results = {}
    for label, env in (("replay", {"KAIROS_SNAPSHOT_INTERVAL_S": "0"}), ("replay, writing one", {}),
                       ("from the snapshot", {})):
        server = Server(db, 1, args.workdir / "server.log", env)
        health = httpx.get(f"{server.url}/healthz", timeout=30.0).json()
        if label == "replay, writing one":
            deadline = time.monotonic() + 600
            while not snapshot.exists() and time.monotonic() < deadline:
                time.sleep(0.5)
        server.stop()
        results[label] = {"healthz_s": round(server.startup_s, 2), "rebuild_s": health["rebuild_seconds"],
                          "started_from": health["started_from"], "events": health["events"]}
        print(label, json.dumps(results[label]), flush=True)
    document = {"benchmark": "startup", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": shlex.join([sys.executable, *sys.argv]), "machine": machine_info(),
                "events": args.events, "users": args.users, "items": args.items,
                "snapshot_mb": round(snapshot.stat().st_size / 2**20, 1) if snapshot.exists() else None,
                "runs": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps({k: v for k, v in document.items() if k != "machine"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
