"""Text encoder benchmark: speed and fidelity of each backend, to pick `text_backend`.

Not part of CI. For each backend (torch fp32, ONNX Runtime fp32, ONNX Runtime int8) and
thread count it measures throughput on the Scientific item texts, single-query latency,
cosine agreement with torch fp32, top-10 retrieval agreement with torch fp32, load time
(first run, which exports the ONNX file, and cached) and the model file's size.
The ONNX backends run text by text whatever the batch size (see kairos.text.encoder), so
their batch 64 and 256 figures differ only by noise.

    .venv/bin/python benchmarks/encoder.py               # all 4,385 texts, ~15 min on 2 cores
    .venv/bin/python benchmarks/encoder.py --limit 500   # quick run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Idle OpenMP threads of torch would otherwise spin and slow the encoder measured next.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from kairos.text import BACKENDS, TextEncoder, load_encoder  # noqa: E402
from kairos.text.encoder import onnx_file, resolve_model  # noqa: E402
from _machine import machine_info as base_machine_info  # noqa: E402 (a sibling script)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "amazon-scientific-unisrec" / "Scientific.text"

_LOAD_SNIPPET = """
import json, sys, time
from pathlib import Path
started = time.perf_counter()
from kairos.text import load_encoder

load_encoder(backend=sys.argv[1], cache_dir=Path(sys.argv[2]), threads=1).encode(["x"])
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def read_texts(path: Path, limit: int | None) -> list[str]:
    """The second column of a UniSRec .text file, header skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    texts = [line.split("\t", 1)[1].strip() for line in lines if "\t" in line]
    return texts[:limit] if limit else texts


def short_queries(texts: list[str], count: int, rng: random.Random) -> list[str]:
    """Search-box-like queries: the first 2-5 words of random item texts."""
    return [" ".join(rng.choice(texts).split()[: rng.randint(2, 5)]) for _ in range(count)]


def load_seconds(backend: str, cache_dir: Path) -> float:
    """Import + load + first encode in a fresh process (what a server start pays)."""
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_SNIPPET, backend, str(cache_dir)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )
    return float(json.loads(result.stdout.strip().splitlines()[-1])["seconds"])


Config = tuple[str, int]


def throughputs(
    encoders: dict[Config, TextEncoder], texts: list[str], batch_size: int
) -> tuple[dict[Config, float], dict[Config, np.ndarray]]:
    """Sentences/s of each encoder over all texts, interleaved chunk by chunk so that load
    from other processes falls on every encoder alike. Rows come back in input order."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # as encode() batches
    chunk = batch_size * 4
    seconds = dict.fromkeys(encoders, 0.0)
    vectors = {c: np.empty((len(texts), e.dim), np.float32) for c, e in encoders.items()}
    for encoder in encoders.values():
        encoder.encode(texts[:batch_size], batch_size=batch_size)  # warm-up
    for start in range(0, len(texts), chunk):
        rows = order[start:start + chunk]
        part = [texts[i] for i in rows]
        for config, encoder in encoders.items():
            started = time.perf_counter()
            vectors[config][rows] = encoder.encode(part, batch_size=batch_size)
            seconds[config] += time.perf_counter() - started
    return {c: len(texts) / s for c, s in seconds.items()}, vectors


def latencies_ms(encoders: dict[Config, TextEncoder], queries: list[str]) -> dict[Config, list[float]]:
    """Single-query encode latency of each encoder, round-robin per query."""
    for query in queries[:10]:
        for encoder in encoders.values():
            encoder.encode([query])
    samples: dict[Config, list[float]] = {c: [] for c in encoders}
    for query in queries:
        for config, encoder in encoders.items():
            started = time.perf_counter()
            encoder.encode([query])
            samples[config].append((time.perf_counter() - started) * 1e3)
    return samples


def top_k(vectors: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The k nearest items of each row (itself excluded), by inner product."""
    scores = vectors[rows] @ vectors.T
    scores[np.arange(len(rows)), rows] = -np.inf
    return np.argpartition(-scores, k, axis=1)[:, :k]


def recall_at_k(reference: np.ndarray, other: np.ndarray, rows: np.ndarray, k: int) -> float:
    ref, got = top_k(reference, rows, k), top_k(other, rows, k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ref, got)]))


def model_file(backend: str, cache_dir: Path) -> Path:
    _, path = resolve_model("")
    if backend == "torch":
        return path / "model.safetensors"
    return onnx_file(path, backend, cache_dir)


def machine_info() -> dict[str, Any]:
    import onnxruntime
    import torch

    return {**base_machine_info(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def markdown(rows: list[dict[str, Any]], batch_sizes: list[int]) -> str:
    head = (["backend", "threads", "file MB", "load first s", "load cached s"]
            + [f"batch {b} /s" for b in batch_sizes]
            + ["query p50 ms", "query p99 ms", "cos mean", "cos min", "recall@10"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["backend"], str(r["threads"]), f"{r['file_mb']:.1f}",
                 f"{r['load_first_s']:.1f}", f"{r['load_cached_s']:.2f}"]
        cells += [f"{r['throughput'][str(b)]:.0f}" for b in batch_sizes]
        cells += [f"{r['latency_p50_ms']:.2f}", f"{r['latency_p99_ms']:.2f}",
                  f"{r['cosine_mean']:.4f}", f"{r['cosine_min']:.4f}", f"{r['recall_at_10']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=None, help="Use only the first N texts.")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--threads", default="1,2", help="Intra-op thread counts to measure.")
    parser.add_argument("--batch-sizes", default="64,256")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--retrieval-items", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "encoder.json")
    args = parser.parse_args()

    backends = args.backends.split(",")
    thread_counts = [int(t) for t in args.threads.split(",")]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    rng = random.Random(args.seed)
    texts = read_texts(args.data, args.limit)
    queries = short_queries(texts, args.queries, rng)
    rows_for_retrieval = np.array(rng.sample(range(len(texts)), min(args.retrieval_items, len(texts))))
    machine = machine_info()
    print(f"{len(texts):,} texts, {len(queries)} queries, {machine['cpu_count']} CPUs", flush=True)

    with tempfile.TemporaryDirectory(prefix="kairos-encoder-bench-") as tmp:
        cache_dir = Path(tmp) / "cache"
        loads: dict[str, tuple[float, float]] = {}
        for backend in backends:
            first = load_seconds(backend, cache_dir)
            loads[backend] = (first, load_seconds(backend, cache_dir))
            print(f"[{backend}] load first {first:.1f}s, cached {loads[backend][1]:.2f}s", flush=True)

        configs = [(b, t) for b in ["torch", *[b for b in backends if b != "torch"]]
                   for t in thread_counts]
        encoders = {c: load_encoder(backend=c[0], cache_dir=cache_dir, threads=c[1]) for c in configs}
        speeds: dict[Config, dict[str, float]] = {c: {} for c in configs}
        vectors: dict[Config, np.ndarray] = {}
        for batch_size in batch_sizes:
            rates, encoded = throughputs(encoders, texts, batch_size)
            for config in configs:
                speeds[config][str(batch_size)] = rates[config]
            vectors = vectors or encoded
            print(f"batch {batch_size}: " + ", ".join(
                f"{b} x{t} {r:.0f}/s" for (b, t), r in rates.items()), flush=True)
        samples = latencies_ms(encoders, queries)

        reference = vectors[configs[0]]
        results: list[dict[str, Any]] = []
        for config in configs:
            backend, threads = config
            cosine = (vectors[config] * reference).sum(axis=1)
            results.append({
                "backend": backend, "threads": threads, "model_id": encoders[config].model_id,
                "file_mb": model_file(backend, cache_dir).stat().st_size / 2**20,
                "load_first_s": loads[backend][0], "load_cached_s": loads[backend][1],
                "throughput": speeds[config],
                "latency_p50_ms": float(np.percentile(samples[config], 50)),
                "latency_p99_ms": float(np.percentile(samples[config], 99)),
                "cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min()),
                "recall_at_10": recall_at_k(reference, vectors[config], rows_for_retrieval, 10),
            })

    table = markdown(results, batch_sizes)
    print("\n" + table)
    machine["loadavg_end"] = list(os.getloadavg())
    document = {
        "benchmark": "encoder",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(p) for p in [sys.executable, *sys.argv]),
        "machine": machine,
        "data": {"path": str(args.data), "texts": len(texts), "queries": len(queries),
                 "retrieval_items": len(rows_for_retrieval)},
        "notes": ("Reference for cosine and recall@10 is torch fp32 at the first thread count. "
                  "Encoders are measured interleaved (chunk by chunk, query by query). "
                  "Load times run in a fresh process with 1 thread: import + load + one encode; "
                  "'first' starts from an empty cache (ONNX export and quantisation included). "
                  "Other work on the machine shares its cores: see loadavg."),
        "results": results,
        "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
