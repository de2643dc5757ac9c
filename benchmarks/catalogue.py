"""How a recommendation's cost grows with the catalogue: 10k, 100k and 1M generated items.

For each size a generated shop (`kairos.datasets.demo`, 20,000 users, 200,000 events) is
imported once into --workdir, then served in process (`Engine.recommend`, n = 10, random
known users, each asked once cold and then again). Measured per size:

- the online sources that need no training (co-visitation, popularity, freshness) with
  the result cache off, and the same requests again with it on (a hit);
- what a trained behaviour model and ALS add per request: scoring every item (one float32
  matrix-vector product, 64 dimensions, and the top 60) against the inner-product index
  they use past `factor_index_min_items` (sources/factor_index.py), on vectors shaped
  like fitted factors (clustered), with the index's recall and build time;
- the vector index's search at that size comes from `benchmarks/index.py`.

The language-model layer is off here (encoding 1M item texts takes this CPU ~20 min).

    .venv/bin/python benchmarks/catalogue.py
    .venv/bin/python benchmarks/catalogue.py --sizes 10000,100000
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _machine import machine_info
from _shop import imported_shop


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def timed(call: Any, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


def factor_vectors(n_items: int, seed: int) -> np.ndarray:
    """Item vectors shaped like fitted factors: around 200 topics, of unequal lengths (on
    structureless random vectors no index beats a scan)."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((200, 64)).astype(np.float32)
    rows = topics[rng.integers(0, 200, n_items)] + 0.5 * rng.standard_normal((n_items, 64)).astype(np.float32)
    return (rows * rng.uniform(0.2, 2.0, (n_items, 1))).astype(np.float32)


def model_scoring(n_items: int, repeats: int, seed: int) -> dict[str, Any]:
    """One request's item scoring by a factor model (the behaviour model, ALS): top 60 of
    query . every item, against the inner-product index the sources use past
    factor_index_min_items (built as a serving process builds it), under a mask that
    allows 99% of the items, with the index's recall of the exact top 60."""
    from kairos.index import InnerProductIndex

    rng = np.random.default_rng(seed + 1)
    items = factor_vectors(n_items, seed)
    allowed = rng.random(n_items) > 0.01
    queries = [(items[rng.integers(0, n_items)] + 0.3 * rng.standard_normal(64)).astype(np.float32)
               for _ in range(repeats)]

    def exact(query: np.ndarray) -> np.ndarray:
        scores = np.where(allowed, items @ query, -np.inf)
        top = np.argpartition(-scores, 59)[:60]
        return top[np.argsort(-scores[top])]

    truth = [exact(query) for query in queries]
    started = time.perf_counter()
    index = InnerProductIndex(items, np.arange(n_items), exact_max=0)
    build_s = time.perf_counter() - started
    found = [index.search(query, 60, allowed)[0] for query in queries]
    recall = float(np.mean([len(set(f.tolist()) & set(t.tolist())) / 60 for f, t in zip(found, truth, strict=True)]))
    return {"every item": percentiles(timed(lambda: [exact(q) for q in queries[:1]], repeats)),
            "index": {**percentiles([timed(lambda q=q: index.search(q, 60, allowed), 1)[0] for q in queries]),
                      "recall_at_60": round(recall, 4), "build_s": round(build_s, 2)}}


def measure(size: int, args: argparse.Namespace) -> dict[str, Any]:
    from kairos.config import Settings
    from kairos.engine import Engine

    db = args.workdir / f"catalogue-{size}.db"
    settings = {"db_path": db, "semantic_enabled": False, "snapshot_interval_s": 0}
    imported_shop(db, args.users, size, args.events, semantic_enabled=False, snapshot_interval_s=0)
    result: dict[str, Any] = {"items": size}
    for label, ttl in (("online sources", 0.0), ("online sources, result cache on", 600.0)):
        engine = Engine(Settings(**settings, result_cache_ttl_s=ttl))
        users = random.Random(args.seed).sample(sorted(engine.state.users), args.requests)
        ask = engine.recommend
        cold = [timed(lambda user=user, ask=ask: ask(user, 10), 1)[0] for user in users]
        warm = [timed(lambda user=user, ask=ask: ask(user, 10), 1)[0] for user in users]
        result[label] = {"first": percentiles(cold), "again": percentiles(warm)}
        engine.close()
    result["behaviour model or ALS, each"] = model_scoring(size, args.requests, args.seed)
    print(json.dumps(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "catalogue")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "catalogue.json")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    from kairos.api.workers import single_threaded_kernels

    single_threaded_kernels()  # as a serving process runs
    runs = [measure(int(size), args) for size in args.sizes.split(",")]
    document = {"benchmark": "catalogue", "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": shlex.join([sys.executable, *sys.argv]), "machine": machine_info(),
                "users": args.users, "events": args.events, "requests": args.requests, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
