"""Evaluation output: a rich table, results.json, report.md and a bar chart."""

from __future__ import annotations

import json
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kairos import __version__
from kairos.evaluation.protocols import LooResult

HEADLINE = ("HR@1", "HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR")


def code_version() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
        return f"{__version__}+{commit}"
    except (OSError, subprocess.CalledProcessError):
        return __version__


def print_table(result: LooResult, console: Console) -> None:
    convention = "history masked" if result.mask_history else "history kept"
    table = Table(title=f"{result.dataset}: leave-one-out ({result.split}), full ranking, {convention}, "
                        f"{result.users:,} users x {result.items:,} items")
    table.add_column("model")
    for key in (*HEADLINE, "coverage@10", "p50 ms"):
        table.add_column(key, justify="right")
    for name, model in result.models.items():
        table.add_row(name, *(f"{model.metrics[k]:.4f}" for k in HEADLINE),
                      f"{model.beyond['coverage@10']:.3f}", f"{model.latency_ms.get('p50', 0):.2f}")
    console.print(table)


def write_outputs(results: list[LooResult], out: Path, config: dict[str, Any], notes: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "kairos": code_version(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "config": config,
        "notes": notes,
        "results": [r.to_json() for r in results],
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    (out / "report.md").write_text(_markdown(results, payload))
    _bar_chart(results, out / "models.png")


def _markdown(results: list[LooResult], payload: dict[str, Any]) -> str:
    lines = [f"# Kairos evaluation — {payload['config'].get('dataset', '')}", "",
             f"Kairos {payload['kairos']}, {payload['date']}, {payload['machine']['platform']}.", ""]
    lines += [f"- {note}" for note in payload["notes"]]
    for result in results:
        convention = "history masked" if result.mask_history else "history kept"
        lines += ["", f"## Leave-one-out ({result.split}), full ranking, {convention}", "",
                  f"{result.users:,} users, {result.items:,} items, {result.train_events:,} events visible to the engine.",
                  "", "| model | " + " | ".join(HEADLINE) + " | coverage@10 | novelty@10 | p50 ms |",
                  "|---" * (len(HEADLINE) + 4) + "|"]
        for name, model in result.models.items():
            lines.append(f"| {name} | " + " | ".join(f"{model.metrics[k]:.4f}" for k in HEADLINE)
                         + f" | {model.beyond['coverage@10']:.3f} | {model.beyond['novelty@10']:.2f}"
                         + f" | {model.latency_ms.get('p50', 0):.2f} |")
    return "\n".join(lines) + "\n"


def _bar_chart(results: list[LooResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("HR@10", "NDCG@10", "MRR")
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        names = list(result.models)
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            values = [result.models[name].metrics[m] for m in metrics]
            ax.bar([x + i * width for x in range(len(metrics))], values, width, label=name)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(metrics))], metrics)
        ax.set_title(f"{result.dataset} ({'history masked' if result.mask_history else 'history kept'})")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
