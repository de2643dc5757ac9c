"""What the behaviour model adds to a request: latency of the sequential source on
live sequences of 200 steps, and of the whole `Engine.recommend`, with and without it.

ml-latest-small is imported into a temporary engine, the model trained on it with
the `long` preset (or loaded with --model), and requests are made for the users
whose sequence is full (200 visits). Variants of the model's inference:
`eager` (fp32 PyTorch, the default) and `int8` (dynamic quantisation of the
transformer's linear layers); for int8 the top-10 overlap with fp32 is reported.
Timings are process CPU time (robust to other jobs on the machine) and wall time.

    .venv/bin/python benchmarks/sequential_serving.py
    .venv/bin/python benchmarks/sequential_serving.py --model path/to/model/version
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import machine_info

from kairos.config import Settings
from kairos.datasets.movielens import import_movielens
from kairos.engine import Engine
from kairos.training.pipeline import as_registered, train_from_store
from kairos.training.registry import ModelRegistry

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("KAIROS_DATA_DIR", ROOT.parent / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a registry version folder to serve")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--config", type=json.loads, default={}, help="SeqRecConfig fields over the preset (JSON)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sequential_serving.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        engine = Engine(Settings(db_path=Path(scratch) / "k.db", sqlite_synchronous="NORMAL"))
        import_movielens(engine, DATA / "ml-latest-small")
        if args.model is not None:
            registered = ModelRegistry(args.model.parent).load(args.model.name)
        else:
            started = time.perf_counter()
            run = train_from_store(engine.store, engine.settings, engine.semantic.embed, overrides={"seed": 0, **args.config})
            registered = as_registered(run)
            results["training_seconds"] = round(time.perf_counter() - started, 1)
        assert registered is not None
        engine.install_model(registered)
        users = [u for u, s in engine.state.users.items() if sum(step.visit for step in s.recent) >= 200]
        rng = np.random.default_rng(0)
        picks = [users[i] for i in rng.integers(len(users), size=args.requests)]
        print(f"{len(users)} users with a full 200-step sequence; {args.requests} requests each way", flush=True)
        served = engine.state.sequential
        assert served is not None
        eager = served.model
        results["model"] = {"version": registered.version, "config": dict(vars(eager.config)),
                            "items": eager.n_items, "parameters": sum(p.numel() for p in eager.module.parameters())}
        reference = {u: top10(engine, u) for u in users}

        quantised = copy.copy(eager)  # the module copied, the caches (item table, transitions) rebuilt
        quantised.module = copy.deepcopy(eager.module)
        quantised._table = quantised._transitions = None
        quantised.item_table()  # the item table stays fp32; only the transformer blocks go int8
        quantised.module.blocks = torch.ao.quantization.quantize_dynamic(quantised.module.blocks, {torch.nn.Linear},
                                                                          dtype=torch.qint8)
        for name, model in (("eager", eager), ("int8", quantised)):
            served.model = model
            entry = {"source": time_it(lambda u: source_call(engine, u), picks),
                     "recommend": time_it(lambda u: engine.recommend(u, 10), picks)}
            if name != "eager":
                entry["top10_overlap_with_fp32"] = float(np.mean(
                    [len(set(top10(engine, u)) & set(reference[u])) / 10 for u in users]))
            results[name] = entry
            print(name, json.dumps(entry), flush=True)
        served.model = eager
        weights = dict(engine.settings.source_weights)
        without = {k: v for k, v in weights.items() if k != "sequential"}
        engine.settings = engine.settings.model_copy(update={"source_weights": without})
        results["recommend_without_sequential"] = time_it(lambda u: engine.recommend(u, 10), picks)
        print("without sequential", json.dumps(results["recommend_without_sequential"]), flush=True)
        engine.close()
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
              "command": "python " + " ".join(sys.argv), "torch": torch.__version__, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


def source_call(engine: Engine, user: str) -> Any:
    ctx = engine.user_context(user)
    return engine.sources["sequential"].candidates(ctx, 30)


def top10(engine: Engine, user: str) -> list[int]:
    return source_call(engine, user).items[:10].tolist()


def time_it(call: Any, users: list[str]) -> dict[str, float]:
    for user in users[:100]:
        call(user)  # warm-up
    cpu, wall = [], []
    for user in users:
        started_cpu, started_wall = time.process_time(), time.perf_counter()
        call(user)
        cpu.append((time.process_time() - started_cpu) * 1000)
        wall.append((time.perf_counter() - started_wall) * 1000)
    return {f"{kind}_{stat}_ms": round(float(fn(values)), 3)
            for kind, values in (("cpu", cpu), ("wall", wall))
            for stat, fn in (("mean", np.mean), ("p50", np.median), ("p99", lambda v: np.percentile(v, 99)))}


if __name__ == "__main__":
    main()
