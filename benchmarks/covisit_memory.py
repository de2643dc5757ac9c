"""Memory of the online state under a long stream of uniformly random visits, with
co-visitation capped per item (`KAIROS_COVISIT_MAX_NEIGHBOURS`) and uncapped.

The soak's event mix (benchmarks/soak.py), applied in process and fast: a catalogue of
ml-latest-small's size, 610 known users and a tenth of events from new users, items
drawn uniformly (the worst case for co-visitation: nearly every visit pairs two items
never paired before). Each cap runs in its own process, so each resident-memory figure
is that state's alone.

    .venv/bin/python benchmarks/covisit_memory.py --events 1500000
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
BATCH = 1_000


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def measure(cap: int, events: int, items: int, checkpoints: int, seed: int) -> dict[str, Any]:
    from kairos.config import Settings
    from kairos.state import Catalog, OnlineState
    from kairos.store import EventRecord, ItemRecord

    catalog = Catalog()
    for k in range(items):
        catalog.upsert(ItemRecord(f"i{k}"))
    state = OnlineState(Settings(covisit_max_neighbours=cap, semantic_enabled=False), catalog)
    rng = random.Random(seed)
    known = [f"u{k}" for k in range(610)]
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    every = max(events // checkpoints, BATCH)
    for first in range(0, events, BATCH):
        batch = [EventRecord(user_id=rng.choice(known) if rng.random() < 0.9 else f"new-{rng.randrange(10**9)}",
                             item_id=f"i{rng.randrange(items)}", type="view", timestamp=1.7e9 + (first + i) * 0.01)
                 for i in range(BATCH)]
        state.apply(batch)
        if (first + BATCH) % every == 0 or first + BATCH >= events:
            rows.append({"events": first + BATCH, "pairs": state.covisit.n_pairs(), "users": len(state.users),
                         "rss_mb": round(rss_mb(), 1), "seconds": round(time.monotonic() - started, 1)})
            print(f"  cap {cap}: {rows[-1]}", flush=True)
    return {"cap": cap, "checkpoints": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_500_000)
    parser.add_argument("--items", type=int, default=9_742)
    parser.add_argument("--caps", default="0,500")
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child: one cap
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "covisit_memory.json")
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.events, args.items, args.checkpoints, args.seed)))
        return
    runs = []
    for cap in (int(c) for c in args.caps.split(",")):
        child = subprocess.run([sys.executable, __file__, "--one", str(cap), "--events", str(args.events),
                                "--items", str(args.items), "--checkpoints", str(args.checkpoints),
                                "--seed", str(args.seed)], capture_output=True, text=True, check=True)
        sys.stdout.write("".join(line + "\n" for line in child.stdout.splitlines()[:-1]))
        runs.append(json.loads(child.stdout.splitlines()[-1]))
    report = {"benchmark": "covisit_memory", "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "command": shlex.join([sys.executable, *sys.argv]), "machine": machine_info(),
              "config": {"events": args.events, "items": args.items, "seed": args.seed}, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
