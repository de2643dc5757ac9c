"""Accuracy benchmark: leave-one-out (full ranking) and prequential replay for every
model on the shared datasets, written into docs/benchmarks.md beside published figures.

    .venv/bin/python benchmarks/accuracy.py              # all datasets, about an hour here
    .venv/bin/python benchmarks/accuracy.py --replay-events 20000

`sequential` and `kairos` read the behaviour model, which each protocol trains
first on its own training events (leave-one-out: once for both conventions).

Not run by CI (CI runs a small replay smoke test instead).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from kairos.evaluation.data import load_eval_data
from kairos.evaluation.protocols import leave_one_out
from kairos.evaluation.replay import PUSH_TARGETERS, new_item_push, replay

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("KAIROS_DATA_DIR", ROOT.parent / "shared" / "data"))
MODELS = ["random", "popular", "covisit", "semantic", "sequential", "kairos"]
ONLINE_MODELS = ["popular", "covisit", "semantic", "sequential", "kairos"]  # cold start, replay

# (folder, 5-core filter, convention of its published figures: mask history?)
DATASETS = [
    ("ml-latest-small", 5, True),
    ("amazon-scientific-unisrec", 0, False),
    ("ml-100k", 0, True),
]

# Published leave-one-out, full-ranking figures on the same protocols.
PUBLISHED = {
    "ml-latest-small": [
        ("SASRec", 0.0522, 0.0993, "LlamaRec (Yue et al., 2023), Table 1, ML-100k = ml-latest-small 5-core, history masked"),
        ("LRURec", 0.0705, 0.1426, "same"),
        ("LlamaRec (Llama-2-7B re-ranker)", 0.0759, 0.1524, "same"),
    ],
    "amazon-scientific-unisrec": [
        ("VQ-Rec", 0.0643, 0.1211, "Hou et al., WWW 2023; UniSRec split, all items, history kept"),
        ("MISSRec (text+image+ID)", 0.0753, 0.1360, "Wang et al., MM 2023; same split and protocol"),
    ],
}

START, END = "<!-- accuracy:start -->", "<!-- accuracy:end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replay-events", type=int, default=10_000,
                        help="events replayed after the cut, per dataset (default 10,000)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "accuracy.json")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()

    started = time.perf_counter()
    report: dict[str, object] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "command": "python " + " ".join(sys.argv),
        "datasets": {},
    }
    sections = []
    for folder, core, masked in DATASETS:
        path = DATA / folder
        if not path.is_dir():
            print(f"skipping {folder}: not found at {path}")
            continue
        data = load_eval_data(path, core, core)
        loo = {mask: leave_one_out(data, MODELS, mask_history=mask) for mask in (masked, not masked)}
        cold = leave_one_out(data, ONLINE_MODELS, mask_history=masked, cold_share=0.1)
        rep = replay(data, ONLINE_MODELS, max_events=args.replay_events)
        push = new_item_push(data, list(PUSH_TARGETERS))
        report["datasets"][folder] = {  # type: ignore[index]
            "summary": data.summary(), "notes": data.notes,
            "loo": {("masked" if m else "kept"): r.to_json() for m, r in loo.items()},
            "coldstart": cold.to_json(), "replay": rep.to_json(), "push": push.to_json(),
        }
        sections.append(_markdown(folder, data.summary(), data.notes, loo, masked, rep, cold, push))
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    header = (f"Measured {report['date'][:10]} on {report['machine']}; `{report['command']}` "
              f"({report['seconds']} s). Raw results: `benchmarks/results/accuracy.json`.")
    _write_docs(args.docs, "\n\n".join([header, *sections]))
    print(f"wrote {args.out} and the accuracy section of {args.docs}")


def _markdown(folder: str, summary: dict[str, int], notes: list[str], loo: dict, masked: bool,  # type: ignore[no-untyped-def]
              rep, cold, push) -> str:
    lines = [f"### {folder}", "",
             f"{summary['users']:,} users, {summary['items']:,} items, {summary['events']:,} events. "
             + " ".join(notes), ""]
    for mask in (masked, not masked):
        result = loo[mask]
        label = "history masked" if mask else "history kept"
        primary = " (the convention of the published figures)" if mask == masked else ""
        lines += [f"Leave-one-out, full ranking over all items, {label}{primary}:", "",
                  "| model | HR@1 | HR@5 | HR@10 | HR@20 | NDCG@5 | NDCG@10 | NDCG@20 | MRR | coverage@10 |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, model in result.models.items():
            m = model.metrics
            lines.append(f"| {name} | " + " | ".join(f"{m[k]:.4f}" for k in
                         ("HR@1", "HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR"))
                         + f" | {model.beyond['coverage@10']:.3f} |")
        if mask == masked:
            for name, ndcg, recall, source in PUBLISHED.get(folder, []):
                lines.append(f"| *{name}, published* | | | {recall:.4f} | | | {ndcg:.4f} | | | | |")
            for name, _, _, source in PUBLISHED.get(folder, [])[:1]:
                lines += ["", f"Published rows: {source}. Their R@10 is our HR@10 (one target per user)."]
        lines.append("")
    lines += [f"Cold start: {cold.cold_items:,} items (10%, seeded) held out of training entirely; "
              f"the {cold.users:,} users whose test target is one of them "
              f"({'history masked' if masked else 'history kept'}):", "",
              "| model | HR@10 (= Recall@10) | NDCG@10 | HR@20 | MRR |", "|---|---|---|---|---|"]
    for name, model in cold.models.items():
        m = model.metrics
        lines.append(f"| {name} | {m['HR@10']:.4f} | {m['NDCG@10']:.4f} | {m['HR@20']:.4f} | {m['MRR']:.4f} |")
    lines += ["", f"New-item push: {push.new_items} arrivals after the 80% cut, 7-day window:", "",
              "| targeter | precision@10 | precision@100 | recall@100 |", "|---|---|---|---|"]
    for name, m in push.targeters.items():
        lines.append(f"| {name} | {m.get('precision@10', 0):.4f} | {m.get('precision@100', 0):.4f} | "
                     f"{m.get('recall@100', 0):.4f} |")
    lines.append("")
    lines += [f"Prequential replay of the first {rep.events:,} events after the 80% time cut, "
              "recommend(user, 10) before each event, then ingest it (online) or not (frozen):", "",
              "| model | HR@10 online | HR@10 frozen | online / frozen | NDCG@10 online | NDCG@10 frozen | p99 ms |",
              "|---|---|---|---|---|---|---|"]
    for name, runs in rep.models.items():
        on, off = runs["online"], runs["frozen"]
        lines.append(f"| {name} | {on.metrics['HR@10']:.4f} | {off.metrics['HR@10']:.4f} | "
                     f"{rep.ratio(name):.2f}x | {on.metrics['NDCG@10']:.4f} | {off.metrics['NDCG@10']:.4f} | "
                     f"{on.latency_ms.get('p99', 0):.2f} |")
    return "\n".join(lines)


def _write_docs(path: Path, body: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{START}\n{body}\n{END}"
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n## Accuracy\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
