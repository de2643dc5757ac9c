"""How the behaviour model treats items it has no behaviour for: the cold-start protocol
(10% of items, seeded, held out of training entirely; only users whose test target is
one of them are scored) for each variant of the cold prior and of the negatives.

Variants (SeqRecConfig fields over the dataset's preset):
    floor+negatives      the prior's floor, and items without behaviour as negatives
    floor                the floor; items without behaviour are no negatives
    neighbours+negatives the text neighbours' prior; items without behaviour as negatives
    neighbours           the default: the text neighbours' prior, no such negatives
    neighbours20         the same over 20 neighbours instead of 5

    .venv/bin/python benchmarks/cold_items.py --datasets amazon-scientific-unisrec --set epochs=6
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

from kairos.evaluation.data import load_eval_data
from kairos.evaluation.protocols import leave_one_out

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("KAIROS_DATA_DIR", ROOT.parent / "shared" / "data"))
# folder -> (k-core, history masked: the convention of its published figures)
DATASETS = {"ml-latest-small": (5, True), "amazon-scientific-unisrec": (0, False)}
VARIANTS: dict[str, dict[str, Any]] = {
    "floor+negatives": {"cold_prior": "floor", "untrained_negatives": True},
    "floor": {"cold_prior": "floor", "untrained_negatives": False},
    "neighbours+negatives": {"cold_prior": "neighbours", "untrained_negatives": True},
    "neighbours": {"cold_prior": "neighbours", "untrained_negatives": False},
    "neighbours20": {"cold_prior": "neighbours", "untrained_negatives": False, "cold_neighbours": 20},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=JSON", help="SeqRecConfig overrides")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cold_items.json")
    args = parser.parse_args()
    overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
    report: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "machine": machine_info(), "command": "python " + " ".join(sys.argv),
                              "overrides": overrides, "datasets": {}}
    for name in args.datasets:
        core, masked = DATASETS[name]
        data = load_eval_data(DATA / name, core, core)
        rows: dict[str, Any] = {}
        for variant in args.variants:
            result = leave_one_out(data, ["sequential", "kairos"], mask_history=masked, cold_share=0.1,
                                   sequential={**VARIANTS[variant], **overrides}, quiet=True)
            rows[variant] = {
                "cold_users": result.users,
                "training_seconds": result.sequential.get("training_seconds"),
                "valid_ndcg10": result.sequential.get("valid", {}).get("valid_ndcg10"),
                **{model: {k: r.metrics[k] for k in ("HR@10", "NDCG@10", "MRR")} for model, r in result.models.items()},
            }
            print(f"{name} {variant}: sequential HR@10 {rows[variant]['sequential']['HR@10']:.4f}, "
                  f"served HR@10 {rows[variant]['kairos']['HR@10']:.4f} ({result.users} users)", flush=True)
        report["datasets"][name] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
