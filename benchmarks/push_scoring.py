"""One item scored for every user: the targeting step of push, timed on its own.

Opens a prepared Kairos database (e.g. the one `benchmarks/push.py` builds: 100,000
users, 2,000 items, 1M events, behaviour model trained), fills the cached user vectors,
then for `--items` random items times (a) the features of every user (the matrix
products over the cached rows: text, behaviour model, co-visitation, activity) with the
calibrated p, and (b) the whole audience choice (features, p, the best 1,000 users
checked for having touched the item). Prints and writes JSON with p50/p90/p99.
`--trees` times the LightGBM map of calibration.LIGHTGBM (with its linear screen)
instead of the default logistic one; its trees are fitted on random labels, since only
their size, not their content, sets the time.

    python benchmarks/push_scoring.py --db /path/to/push.db [--trees]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from kairos.config import Settings
from kairos.engine import Engine
from kairos.push.calibration import DEFAULT, Calibrator, _fit
from kairos.push.engine_view import EngineView
from kairos.push.targeting import Targeter
from kairos.push.user_vectors import UserVectors

ROOT = Path(__file__).resolve().parent.parent


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {f"p{q}": round(float(np.percentile(ms, q)), 1) for q in (50, 90, 99)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trees", action="store_true", help="Time the LightGBM map (screened), not the logistic.")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "push_scoring.json")
    args = parser.parse_args()
    began = time.perf_counter()
    engine = Engine(Settings(db_path=args.db))  # its model registry: <db>.models
    opened = time.perf_counter() - began
    view = EngineView(engine)
    vectors = UserVectors(view)
    began = time.perf_counter()
    vectors.mark_all()
    vectors.refresh()
    filled = time.perf_counter() - began
    targeter = Targeter(view, vectors, DEFAULT)
    rows = np.flatnonzero(vectors.alive[: len(vectors)])
    rng = np.random.default_rng(args.seed)
    keys = rng.choice(len(engine.catalog), args.items, replace=False).tolist()
    if args.trees:
        targeter.calibrator = random_trees(targeter, rows, rng)
    targeter.p(keys[0], rows)  # warm caches (item keys, covisit column)
    scoring, audience = [], []
    for key in keys:
        t = time.perf_counter()
        p = targeter.calibrator_for(key).ranked(targeter.features(key, rows))  # what audience() ranks by
        scoring.append(time.perf_counter() - t)
        assert len(p) == len(rows)
    for key in keys:
        t = time.perf_counter()
        targeter.audience(engine.catalog.ids[key], 1000)
        audience.append(time.perf_counter() - t)
    served = view.sequential()
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "processor": platform.processor()},
        "users": int(len(rows)), "items": len(engine.catalog), "behaviour_model": served.version if served else None,
        "calibration": targeter.calibrator.kind,
        "open_seconds": round(opened, 1), "fill_vectors_seconds": round(filled, 1),
        "score_all_users_ms": percentiles(scoring), "audience_of_1000_ms": percentiles(audience),
    }
    engine.close()
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def random_trees(targeter: Targeter, rows: np.ndarray, rng: np.random.Generator) -> Calibrator:
    """A LightGBM map of the configured size, fitted on real features and random labels."""
    keys = rng.choice(targeter.view.n_items(), 20, replace=False).tolist()
    x = np.vstack([targeter.features(k, rng.choice(rows, 1000, replace=False)) for k in keys])
    y = (rng.random(len(x)) < 0.05).astype(np.float64)
    return _fit("lightgbm:all", x, y, np.ones(len(x)))


if __name__ == "__main__":
    raise SystemExit(main())
