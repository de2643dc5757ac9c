"""Evaluation output: a rich table, results.json, report.md and a bar chart."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kairos import __version__
from kairos.evaluation.protocols import LooResult
from kairos.evaluation.push_replay import PolicyReplayResult
from kairos.evaluation.push_targeting import METRICS as PUSH_METRICS
from kairos.evaluation.push_targeting import TargetingResult
from kairos.evaluation.replay import ReplayResult, TemporalResult

AnyResult = LooResult | TemporalResult | ReplayResult | TargetingResult | PolicyReplayResult

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
    cold = f", cold start ({result.cold_items:,} items held out)" if result.cold_items else ""
    table = Table(title=f"{result.dataset}: leave-one-out ({result.split}){cold}, full ranking, {convention}, "
                        f"{result.users:,} users x {result.items:,} items")
    table.add_column("model")
    for key in (*HEADLINE, "coverage@10", "p50 ms"):
        table.add_column(key, justify="right")
    for name, model in result.models.items():
        table.add_row(name, *(f"{model.metrics[k]:.4f}" for k in HEADLINE),
                      f"{model.beyond['coverage@10']:.3f}", f"{model.latency_ms.get('p50', 0):.2f}")
    console.print(table)
    if result.paired:
        paired = Table(title=f"NDCG@10 difference, paired by user (95% bootstrap){_llm_note(result)}")
        for column in ("comparison", "users", "difference", "95% interval", "relative"):
            paired.add_column(column, justify="left" if column == "comparison" else "right")
        for name, parts in result.paired.items():
            for part, d in parts.items():
                paired.add_row(f"{name} ({part})", f"{d['users']:,}", f"{d['diff']:+.4f}",
                               f"[{d['low']:+.4f}, {d['high']:+.4f}]", f"{d.get('relative', 0.0):+.1%}")
        console.print(paired)


def _llm_note(result: LooResult) -> str:
    return f"; {result.llm['model']}" if result.llm else ""


def print_result(result: AnyResult, console: Console) -> None:
    if isinstance(result, LooResult):
        print_table(result, console)
        return
    title, header, rows = _rows(result)
    table = Table(title=title)
    for column in header:
        table.add_column(column, justify="left" if column == header[0] else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _rows(result: AnyResult) -> tuple[str, list[str], list[list[str]]]:
    """A non-LOO result as (title, header, rows) for the terminal and markdown alike."""
    if isinstance(result, TemporalResult):
        keys = [f"Recall@{result.k}", f"NDCG@{result.k}", f"coverage@{result.k}"]
        return (f"{result.dataset}: global temporal split, {result.users:,} users",
                ["model", *keys],
                [[name, *(f"{m[k]:.4f}" for k in keys)] for name, m in result.models.items()])
    if isinstance(result, ReplayResult):
        refresh = result.refresh_modes()
        rows = []
        for name, runs in result.models.items():
            on, off = runs["online"], runs["frozen"]
            peers = [cell for mode in refresh if mode in runs
                     for cell in (f"{runs[mode].metrics['HR@10']:.4f}", f"{result.ratio(name, over=mode):.2f}x")]
            rows.append([name, f"{on.metrics['HR@10']:.4f}", f"{off.metrics['HR@10']:.4f}",
                         f"{result.ratio(name):.2f}x", *peers, f"{on.metrics['NDCG@10']:.4f}",
                         f"{off.metrics['NDCG@10']:.4f}", f"{on.latency_ms.get('p50', 0):.2f}",
                         f"{on.latency_ms.get('p99', 0):.2f}"])
        peer_header = [h for mode in refresh for h in (f"HR@10 {_every(mode)}", f"online/{_every(mode)}")]
        return (f"{result.dataset}: prequential replay of {result.events:,} events",
                ["model", "HR@10 online", "HR@10 frozen", "online/frozen", *peer_header, "NDCG@10 online",
                 "NDCG@10 frozen", "p50 ms", "p99 ms"], rows)
    if isinstance(result, PolicyReplayResult):
        keys = ["sends", "hits", "precision", "sends_per_user_per_day", "recall_of_engaged_days",
                "cap_violations", "quiet_hour_violations"]
        matched = result.matched
        versus = (f"; precision at popular's volume {matched['ratio']:.2f}x popular [{matched['low']:.2f}, "
                  f"{matched['high']:.2f}]" if matched else "")
        return (f"{result.dataset}: push policy replay of {result.events:,} events, {result.users:,} users, "
                f"{result.days:g} days{versus}", ["strategy", *keys],
                [[name, *(f"{m[k]:.4f}" if isinstance(m[k], float) else f"{m[k]:,}" for k in keys)]
                 for name, m in result.strategies.items()])
    return _targeting_rows(result)


def _every(mode: str) -> str:
    """'refresh 3600s' -> 'every 1h'."""
    seconds = float(mode.split()[1][:-1])
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"every {seconds / size:g}{unit}"
    return f"every {seconds:g}s"


def _targeting_rows(result: TargetingResult) -> tuple[str, list[str], list[list[str]]]:
    order = "per-user order" if result.order == "per-user" else f"{result.window_days:g}-day window"
    title = (f"{result.dataset}: item -> user targeting{' (cold items)' if result.cold else ''}, "
             f"{result.items:,} items x {result.users:,} users, {order}")
    rows = []
    for name, metrics in result.targeters.items():
        cells = [f"{metrics[k]['mean']:.4f} [{metrics[k]['low']:.4f}, {metrics[k]['high']:.4f}]"
                 for k in PUSH_METRICS]
        paired = result.paired.get(f"kairos/{name}")
        rows.append([name, *cells, f"{paired['ratio']:.2f}x [{paired['low']:.2f}, {paired['high']:.2f}]"
                     if paired else ""])
    if result.ceiling:
        rows.append(["(ceiling)", *(f"{result.ceiling[k]:.4f}" for k in PUSH_METRICS), ""])
    return title, ["targeter", *PUSH_METRICS, "kairos / it, P@100"], rows


def write_outputs(results: list[AnyResult], out: Path, config: dict[str, Any], notes: list[str]) -> list[Path]:
    """results.json, report.md and PNG plots; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "kairos": code_version(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count()},
        "config": config,
        "notes": notes,
        "results": [r.to_json() for r in results],
    }
    written = [out / "results.json", out / "report.md"]
    written[0].write_text(json.dumps(payload, indent=2))
    written[1].write_text(_markdown(results, payload))
    loo = [r for r in results if isinstance(r, LooResult)]
    if loo:
        written.append(out / "models.png")
        _bar_chart(loo, written[-1])
    for result in results:
        if isinstance(result, ReplayResult):
            written.append(out / "replay.png")
            _rolling_chart(result, written[-1])
        if isinstance(result, TargetingResult) and result.calibration:
            written.append(out / f"reliability{'-cold' if result.cold else ''}.png")
            _reliability_chart(result, written[-1])
    return written


def _markdown(results: list[AnyResult], payload: dict[str, Any]) -> str:
    lines = [f"# Kairos evaluation — {payload['config'].get('dataset', '')}", "",
             f"Kairos {payload['kairos']}, {payload['date']}, {payload['machine']['platform']}, "
             f"{payload['machine']['cpus']} CPUs. Command: `{payload['config'].get('command', '')}`", ""]
    lines += [f"- {note}" for note in payload["notes"]]
    for result in results:
        if not isinstance(result, LooResult):
            title, header, rows = _rows(result)
            lines += ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            if isinstance(result, TargetingResult):
                lines += _calibration_lines(result)
            continue
        convention = "history masked" if result.mask_history else "history kept"
        cold = f", cold start ({result.cold_items:,} items held out of training)" if result.cold_items else ""
        lines += ["", f"## Leave-one-out ({result.split}){cold}, full ranking, {convention}", "",
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


def _rolling_chart(result: ReplayResult, path: Path, window: int = 500) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(9, 4))
    for name, runs in result.models.items():
        for mode, style in (("online", "-"), ("frozen", "--")):
            hits = np.array(runs[mode].hits)
            if len(hits) == 0:
                continue
            size = min(window, len(hits))
            rolling = np.convolve(hits, np.ones(size) / size, mode="valid")
            ax.plot(np.arange(len(rolling)) + size, rolling, style, label=f"{name} {mode}")
    ax.set_xlabel("events replayed")
    ax.set_ylabel(f"HR@10, rolling mean of {window}")
    ax.set_title(f"{result.dataset}: online vs frozen")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _calibration_lines(result: TargetingResult) -> list[str]:
    lines = [f"- {note}" for note in result.notes]
    for part, label in (("all", "every eligible (user, item) pair"), ("top100", "each item's top 100")):
        c = result.calibration.get(part)
        if c:
            lines.append(f"- calibration of the served p over {label}: ECE {c['ece']:.4f}, Brier {c['brier']:.4f}, "
                         f"mean p {c['mean_p']:.4f} vs rate {c['rate']:.4f} ({c['pairs']:,} pairs)")
    return ["", *lines] if lines else []


def _reliability_chart(result: TargetingResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, part, label in ((axes[0], "all", "every eligible pair"), (axes[1], "top100", "each item's top 100")):
        bins = result.calibration[part]["bins"]
        p, rate = [b["p"] for b in bins], [b["rate"] for b in bins]
        top = max([*p, *rate, 1e-6]) * 1.1
        ax.plot([0, top], [0, top], ":", color="grey", label="perfect")
        ax.plot(p, rate, "o-", label=f"kairos (ECE {result.calibration[part]['ece']:.4f})")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel("served p (mean of an equal-mass bin)")
        ax.set_ylabel("share who took the item")
        ax.set_title(f"{result.dataset}{' cold' if result.cold else ''}: {label}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
