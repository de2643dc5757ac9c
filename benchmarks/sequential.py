"""Behaviour-model benchmark: leave-one-out, full ranking, on the shared datasets.

Per user the last item is the test target, the one before it the validation target
(early stopping); the model trains on everything before, then ranks the test target
against every item with the whole earlier history as input.

    .venv/bin/python benchmarks/sequential.py                       # both datasets, default runs
    .venv/bin/python benchmarks/sequential.py --datasets ml-latest-small \\
        --runs ids/softmax text/softmax both/softmax both/sampled_softmax both/bce both+events/softmax
    .venv/bin/python benchmarks/sequential.py --set lr=0.002 dropout=0.3   # override config fields

A run is `variant` or `variant/loss`: variant is ids, text or both (the item representation),
with `+events` for event-type and time-gap inputs, or `preset` (the preset's own); without a
loss, the preset's. Each dataset
starts from its preset in kairos.models.SEQREC_PRESETS (ml-latest-small: "long",
Scientific: "short"); `--set` overrides its fields. Results are merged by (dataset, run,
overrides) into benchmarks/results/sequential.json. Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kairos.config import Settings
from kairos.evaluation.data import EvalData, load_eval_data
from kairos.evaluation.metrics import mean_metrics, rank_metrics, target_rank
from kairos.models import (EpochReport, SeqRecConfig, StepFeatures, TrainedModel, event_token, preset_config,
                           train_sequential)
from kairos.store import ItemRecord
from kairos.text.cache import SQLiteEmbeddingCache
from kairos.text.compose import item_text, text_hash

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("KAIROS_DATA_DIR", ROOT.parent / "shared" / "data"))

# folder -> (k-core, history masked at test time?, the SEQREC_PRESETS entry it starts from)
DATASETS: dict[str, tuple[int, bool, str]] = {
    "ml-latest-small": (5, True, "long"),
    "amazon-scientific-unisrec": (0, False, "short"),
}
DEFAULT_RUNS = ["preset"]

# Leave-one-out, full-ranking figures on the same splits (see benchmarks/accuracy.py).
REFERENCE = {
    "ml-latest-small": {"SASRec (published)": {"NDCG@10": 0.0522, "HR@10": 0.0993},
                        "LRURec (published)": {"NDCG@10": 0.0705, "HR@10": 0.1426},
                        "LlamaRec (published)": {"NDCG@10": 0.0759, "HR@10": 0.1524},
                        "co-visitation (ours)": {"NDCG@10": 0.0780, "HR@10": 0.1413}},
    "amazon-scientific-unisrec": {"VQ-Rec (published)": {"NDCG@10": 0.0643, "HR@10": 0.1211},
                                  "MISSRec (published)": {"NDCG@10": 0.0753, "HR@10": 0.1360},
                                  "co-visitation (ours)": {"NDCG@10": 0.0740, "HR@10": 0.1055}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="variant/loss, e.g. both/softmax")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="SeqRecConfig overrides")
    parser.add_argument("--threads", type=int, default=1, help="training threads (scoring uses 1); 2 only on an idle machine")
    parser.add_argument("--refit", action="store_true",
                        help="also retrain on every given item (validation item included) for the "
                             "best epoch count of the holdout run, and test that as RUN+refit")
    parser.add_argument("--save", type=Path, default=None, help="save each model under this folder")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sequential.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = dict(_parse_override(s) for s in args.set)

    for name in args.datasets:
        core, masked, preset = DATASETS[name]
        loaded = time.perf_counter()
        data = load_eval_data(DATA / name, core, core) if core else load_eval_data(DATA / name)
        prepared = prepare(data)
        print(f"{name}: {len(prepared['given']):,} users, {prepared['n_items']:,} items, "
              f"loaded and text-encoded in {time.perf_counter() - loaded:.0f}s", flush=True)
        for run in args.runs:
            config = run_config(preset, run, args.threads, overrides)
            result = evaluate_run(name, prepared, config, masked)
            result.update(run=run, overrides=overrides)
            results = [result]
            if args.refit:
                # The refit keeps the holdout run's epoch count and transition-prior scale.
                refit_config = replace(config, holdout=False, epochs=max(1, result["valid"]["best_epoch"]),
                                       max_seconds=None, transition_scale=result["valid"].get("transition_scale"))
                refit = evaluate_run(name, prepared, refit_config, masked)
                refit.update(run=f"{run}+refit", overrides=overrides,
                             total_training_seconds=round(result["training_seconds"] + refit["training_seconds"], 1))
                results.append(refit)
            for result in results:
                print(json.dumps({k: result[k] for k in ("dataset", "run", "overrides", "training_seconds")}
                                 | {"test": {k: round(v, 4) for k, v in result["test"].items()}}), flush=True)
                if args.save is not None:
                    folder = f"{name}-{result['run'].replace('/', '-')}"
                    result["saved"] = str(result.pop("model").save(args.save / folder))
                result.pop("model", None)
                _merge(args.out, result)
    print(f"wrote {args.out}")


def run_config(preset: str, run: str, threads: int, overrides: dict[str, Any]) -> SeqRecConfig:
    """The preset, then the run's variant and loss, then `--set`."""
    variant, _, loss = run.partition("/")
    representation = {} if variant == "preset" else _variant(variant)
    return preset_config(preset, **{**representation, **({"loss": loss} if loss else {}), "threads": threads,
                                    **overrides})


def prepare(data: EvalData) -> dict[str, Any]:
    """Per-user index sequences (items 1..n in sorted-id order), event features and
    text vectors; the test item is split off here and never reaches training."""
    ids = sorted({e.item_id for e in data.events})
    index = {item_id: i + 1 for i, item_id in enumerate(ids)}
    items: dict[str, list[int]] = {}
    tokens: dict[str, list[str]] = {}
    times: dict[str, list[float]] = {}
    for e in data.events:
        items.setdefault(e.user_id, []).append(index[e.item_id])
        tokens.setdefault(e.user_id, []).append(event_token(e.type, e.value))
        times.setdefault(e.user_id, []).append(e.timestamp)
    users = sorted(u for u, s in items.items() if len(s) >= 3)
    return {
        "name": data.name, "n_items": len(ids), "fingerprint": data.fingerprint(), "summary": data.summary(),
        "users": users,
        "given": {u: items[u][:-1] for u in users},
        "features": {u: StepFeatures(tokens[u][:-1], times[u][:-1]) for u in users},
        "test": {u: items[u][-1] for u in users},
        "text": text_vectors([i for i in data.items if i.item_id in index], index, len(ids)),
    }


def text_vectors(items: list[ItemRecord], index: dict[str, int], n_items: int) -> np.ndarray:
    """(n_items + 1) x dim unit vectors of each item's composed text (row 0 and items
    without text: zeros), through the machine-wide embedding cache."""
    from kairos.text.encoder import load_encoder

    settings = Settings()
    encoder = load_encoder()
    cache = SQLiteEmbeddingCache(settings.text_cache_dir / "embeddings.sqlite")
    texts = {index[i.item_id]: item_text(i, settings.item_text_template, tuple(settings.item_text_attributes))
             for i in items}
    texts = {k: t for k, t in texts.items() if t}
    hashes = {k: text_hash(t) for k, t in texts.items()}
    found = cache.get(encoder.model_id, hashes.values())
    missing = {h: texts[k] for k, h in hashes.items() if h not in found}
    if missing:
        encoded = encoder.encode(list(missing.values()), show_progress=True)
        new = dict(zip(missing, encoded, strict=True))
        cache.put(encoder.model_id, new)
        found.update(new)
    out = np.zeros((n_items + 1, encoder.dim), dtype=np.float32)
    for k, h in hashes.items():
        out[k] = found[h]
    return out


def evaluate_run(name: str, prepared: dict[str, Any], config: SeqRecConfig, masked: bool) -> dict[str, Any]:
    def report(r: EpochReport) -> None:
        print(f"  epoch {r.epoch:3d}/{r.epochs}  loss {r.loss:.4f}  valid N@10 {r.valid_ndcg10:.4f} "
              f"HR@10 {r.valid_hr10:.4f}  (best epoch {r.best_epoch})  {r.seconds:.1f}s  "
              f"elapsed {r.elapsed:.0f}s  eta {r.eta_seconds:.0f}s", flush=True)

    model = train_sequential(prepared["given"], prepared["n_items"],
                             prepared["text"] if config.use_text else None, config, report,
                             features=prepared["features"] if config.use_event_features else None)
    scored = time.perf_counter()
    metrics = test_metrics(model, prepared, masked)
    history = model.metrics.pop("history")
    return {
        "dataset": name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "command": "python " + " ".join(sys.argv), "protocol": {
            "split": "leave-one-out: last item test, second-to-last validation",
            "ranking": "full, all items", "history_at_test": "masked" if masked else "kept",
        },
        "data": {**prepared["summary"], "fingerprint": prepared["fingerprint"], "evaluated_users": len(prepared["users"])},
        "config": asdict(config), "version": model.version, "training_seconds": round(model.training_seconds, 1),
        "scoring_seconds": round(time.perf_counter() - scored, 1), "valid": model.metrics,
        "epochs": [{k: round(v, 4) for k, v in h.items()} for h in history],
        "test": metrics, "reference": REFERENCE.get(name, {}), "model": model,
    }


def test_metrics(model: TrainedModel, prepared: dict[str, Any], masked: bool, batch: int = 256) -> dict[str, float]:
    """HR@{1,5,10,20}, NDCG@{5,10,20}, MRR of each user's test item, ties split evenly."""
    users: list[str] = prepared["users"]
    rows = []
    for start in range(0, len(users), batch):
        chunk = users[start : start + batch]
        features = [prepared["features"][u] for u in chunk] if model.config.use_event_features else None
        scores = model.score_sequences([prepared["given"][u] for u in chunk], features)[:, 1:]
        for user, row in zip(chunk, scores, strict=True):
            target = prepared["test"][user] - 1
            candidates = None
            if masked:
                candidates = np.ones(len(row), dtype=bool)
                candidates[np.asarray(prepared["given"][user]) - 1] = False
            rows.append(rank_metrics(*target_rank(row, target, candidates)))
    return mean_metrics(rows)


def _variant(variant: str) -> dict[str, bool]:
    base, _, extra = variant.partition("+")
    if base not in ("ids", "text", "both") or extra not in ("", "events"):
        raise SystemExit(f"unknown variant {variant!r}: ids, text or both, optionally +events")
    return {"use_ids": base in ("ids", "both"), "use_text": base in ("text", "both"), "use_event_features": extra == "events"}


def _parse_override(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    if key not in {f.name for f in fields(SeqRecConfig)}:
        raise SystemExit(f"unknown config field {key!r}")
    if value in ("", "None", "null"):
        return key, None
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _merge(out: Path, result: dict[str, Any]) -> None:
    """Keep earlier runs; a run with the same dataset, name and overrides is replaced."""
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(out.read_text()) if out.exists() else {"runs": []}
    key = (result["dataset"], result["run"], json.dumps(result["overrides"], sort_keys=True))
    runs = [r for r in existing["runs"]
            if (r["dataset"], r["run"], json.dumps(r.get("overrides", {}), sort_keys=True)) != key]
    runs.append(result)
    existing.update(updated=result["date"], runs=runs)
    out.write_text(json.dumps(existing, indent=1))


if __name__ == "__main__":
    main()
