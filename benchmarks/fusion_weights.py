"""Choose a source's fusion weight on the validation split, then report the test split.

Leave-one-out through the harness: `--split valid` holds out each user's last two
events and scores the second-to-last, so choosing the weight never looks at the
test targets. The behaviour model is trained once per dataset and split (the
harness caches it) and shared by every weight tried.

    .venv/bin/python benchmarks/fusion_weights.py --source sequential --weights 0 0.5 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _machine import machine_info

from kairos.config import Settings
from kairos.evaluation.data import load_eval_data
from kairos.evaluation.protocols import leave_one_out

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("KAIROS_DATA_DIR", ROOT.parent / "shared" / "data"))
# folder -> (k-core, history masked: the convention of its published figures)
DATASETS = {"ml-latest-small": (5, True), "amazon-scientific-unisrec": (0, False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="sequential")
    parser.add_argument("--weights", nargs="+", type=float, default=[0.0, 0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fusion_weights.json")
    args = parser.parse_args()
    base = dict(Settings().source_weights)
    report: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "machine": machine_info(), "command": "python " + " ".join(sys.argv),
                              "source": args.source, "base_weights": base, "datasets": {}}
    for name in args.datasets:
        core, masked = DATASETS[name]
        data = load_eval_data(DATA / name, core, core)
        rows: dict[str, Any] = {}
        for split in ("valid", "test"):
            for weight in args.weights:
                os.environ["KAIROS_SOURCE_WEIGHTS"] = json.dumps({**base, args.source: weight})
                result = leave_one_out(data, ["kairos"], mask_history=masked, split=split, quiet=True)
                metrics = result.models["kairos"].metrics
                rows.setdefault(str(weight), {})[split] = {k: metrics[k] for k in ("NDCG@10", "HR@10", "MRR")}
                print(f"{name} {split} {args.source}={weight:g}: NDCG@10 {metrics['NDCG@10']:.4f} "
                      f"HR@10 {metrics['HR@10']:.4f}", flush=True)
        best = max(args.weights, key=lambda w: rows[str(w)]["valid"]["NDCG@10"])
        report["datasets"][name] = {"weights": rows, "chosen_on_valid": best,
                                    "test_at_chosen": rows[str(best)]["test"]}
        print(f"{name}: chosen on validation {args.source}={best:g}; test {rows[str(best)]['test']}", flush=True)
    os.environ.pop("KAIROS_SOURCE_WEIGHTS", None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
