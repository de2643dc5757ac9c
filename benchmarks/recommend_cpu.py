"""CPU time of one `Engine.recommend`, with and without the language-model layer.

In-process and measured as process CPU time, so it holds even when other jobs
share the machine (wall-clock serving latency is in benchmarks/serving.py).

    .venv/bin/python benchmarks/recommend_cpu.py --events 300000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _machine import machine_info

from kairos.config import Settings
from kairos.datasets.demo import DemoConfig, generate_demo, import_demo_data
from kairos.engine import Engine

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=6000)
    parser.add_argument("--items", type=int, default=4000)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "recommend_cpu.json")
    args = parser.parse_args()
    data = generate_demo(DemoConfig(n_users=args.users, n_items=args.items, n_events=args.events))
    results = {}
    for semantic in (False, True):
        with tempfile.TemporaryDirectory() as scratch:
            engine = Engine(Settings(db_path=Path(scratch) / "k.db", sqlite_synchronous="NORMAL",
                                     semantic_enabled=semantic))
            import_demo_data(engine, data, quiet=True)
            users = list(engine.state.users)[: args.requests]
            for user in users[:200]:
                engine.recommend(user, 10)  # warm-up
            cpu = []
            for user in users:
                started = time.process_time()
                engine.recommend(user, 10)
                cpu.append((time.process_time() - started) * 1000)
            cpu.sort()
            results["semantic" if semantic else "no_semantic"] = {
                "mean_ms": sum(cpu) / len(cpu), "p50_ms": cpu[len(cpu) // 2], "p99_ms": cpu[int(len(cpu) * 0.99)],
            }
            engine.close()
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
              "command": "python " + " ".join(sys.argv), "config": vars(args) | {"out": str(args.out)},
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for name, r in results.items():
        print(f"{name}: CPU per recommend mean {r['mean_ms']:.3f} ms, p50 {r['p50_ms']:.3f}, p99 {r['p99_ms']:.3f}")


if __name__ == "__main__":
    main()
