"""Vector-index benchmark: build time, memory, query latency and HNSW recall@10.

Synthetic unit vectors from a Gaussian mixture (Zipf-sized clusters of varying spread, so
neighbourhoods are uneven, as with real text embeddings). For each size it builds the HNSW
mode (exact_max=0) and, up to --exact-max-size, the exact mode, then times 1,000 single
queries through `VectorIndex.search` with no mask, with a seen-filter mask (100 keys
excluded per query, 5 of them among the query's true top-10 so the filter matters) and with
a mask allowing a random 1% of keys. Ground truth comes from faiss IndexFlatIP over chunks
of the base vectors. Not part of CI.

    .venv/bin/python benchmarks/index.py                          # 10k, 100k, 1M
    .venv/bin/python benchmarks/index.py --sizes 10000 100000     # no 1M (~3 min)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from kairos.index import VectorIndex

from _machine import machine_info as base_machine_info  # noqa: E402 (a sibling script)

ROOT = Path(__file__).resolve().parents[1]
K = 10
SEEN = 100  # keys a seen-filter excludes per query
SEEN_NEAR = 5  # of which taken from the query's exact top-10


def mixture(n: int, dim: int, seed: int, clusters: int, intrinsic: int = 32,
            chunk: int = 100_000) -> np.ndarray:
    """n unit vectors from a fixed Gaussian mixture (centres and shapes depend only on dim,
    clusters and intrinsic). Clusters have Zipf sizes and varying spread; within a cluster
    the variation lies mostly in a random `intrinsic`-dimensional subspace with a decaying
    spectrum, plus weak isotropic noise, as text embeddings concentrate near low-dimensional
    manifolds. intrinsic=0 gives isotropic clusters: a worst case for any ANN index, since
    neighbours in 384 independent dimensions are barely closer than non-neighbours."""
    shape_rng = np.random.default_rng(1_000_003)
    centres = shape_rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.7
    weights /= weights.sum()
    spread = shape_rng.uniform(0.5, 1.1, clusters).astype(np.float32)
    if intrinsic:
        bases = shape_rng.standard_normal((clusters, intrinsic, dim), dtype=np.float32) / np.sqrt(dim)
        spectrum = np.arange(1, intrinsic + 1, dtype=np.float32) ** -0.5
        spectrum /= np.linalg.norm(spectrum)
        noise = 0.25 / np.sqrt(dim)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        label = rng.choice(clusters, m, p=weights)
        if intrinsic:
            block = rng.standard_normal((m, dim), dtype=np.float32) * noise
            latent = rng.standard_normal((m, intrinsic), dtype=np.float32) * spectrum
            for c in np.unique(label):
                rows = np.flatnonzero(label == c)
                block[rows] += latent[rows] @ bases[c]
        else:
            block = rng.standard_normal((m, dim), dtype=np.float32) / np.sqrt(dim)
        block *= spread[label][:, None]
        block += centres[label]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + m] = block
    return out


def exact_top(base: np.ndarray, queries: np.ndarray, k: int, chunk: int = 200_000) -> np.ndarray:
    """Exact top-k keys (row numbers) by inner product, via IndexFlatIP over chunks of base."""
    keys = np.empty((len(queries), 0), dtype=np.int64)
    scores = np.empty((len(queries), 0), dtype=np.float32)
    for start in range(0, len(base), chunk):
        flat = faiss.IndexFlatIP(base.shape[1])
        flat.add(base[start : start + chunk])
        d, i = flat.search(queries, k)
        keys = np.hstack([keys, i + start])
        scores = np.hstack([scores, d])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        keys, scores = np.take_along_axis(keys, order, 1), np.take_along_axis(scores, order, 1)
    return keys


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3)}


def timed_queries(index: VectorIndex, queries: np.ndarray, mask_for: Callable[[int], np.ndarray | None]
                  ) -> tuple[dict[str, float], np.ndarray]:
    """Latency of one search per query (mask building untimed) and the keys found."""
    samples, found = [], np.empty((len(queries), K), dtype=np.int64)
    for warm in range(min(20, len(queries))):
        index.search(queries[warm], K, mask_for(warm))
    for i in range(len(queries)):
        mask = mask_for(i)
        start = time.perf_counter()
        keys, _ = index.search(queries[i], K, mask)
        samples.append(time.perf_counter() - start)
        found[i] = keys[0]
    return percentiles(samples), found


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth)]
    return round(float(np.sum(hits)) / truth.size, 4)


class Masks:
    """Per-query allowed masks over n keys, reusing one buffer (masks are used immediately)."""

    def __init__(self, n: int, n_queries: int, truth: np.ndarray, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.excluded = [rng.choice(n, SEEN, replace=False) for _ in range(n_queries)]
        for i in range(len(truth)):
            near = rng.choice(truth[i, :K], SEEN_NEAR, replace=False)
            self.excluded[i] = np.unique(np.concatenate([near, self.excluded[i][: SEEN - SEEN_NEAR]]))
        self.seen_buffer = np.ones(n, dtype=bool)
        self.previous: np.ndarray | None = None
        self.one_percent = np.zeros(n, dtype=bool)
        self.one_percent[rng.choice(n, max(K, n // 100), replace=False)] = True

    def seen(self, i: int) -> np.ndarray:
        if self.previous is not None:
            self.seen_buffer[self.previous] = True
        self.previous = self.excluded[i]
        self.seen_buffer[self.previous] = False
        return self.seen_buffer


def masked_truth(truth_wide: np.ndarray, masks: Masks, n_recall: int) -> np.ndarray:
    """Exact top-K under each seen mask, from the unmasked exact top-(K + SEEN)."""
    out = np.empty((n_recall, K), dtype=np.int64)
    for i in range(n_recall):
        row = truth_wide[i][~np.isin(truth_wide[i], masks.excluded[i])]
        out[i] = row[:K]
    return out


def measure(mode: str, base: np.ndarray, queries: np.ndarray, truth: np.ndarray,
            truth_seen: np.ndarray, truth_one: np.ndarray, masks: Masks,
            args: argparse.Namespace) -> dict[str, Any]:
    n, dim = base.shape
    exact_max = n if mode == "exact" else 0
    gc.collect()
    before = rss_bytes()
    index = VectorIndex(dim, exact_max=exact_max, hnsw_m=args.m, ef_construction=args.ef_construction,
                        ef_search=args.ef_search)
    start = time.perf_counter()
    index.upsert(np.arange(n), base)
    build_s = time.perf_counter() - start
    gc.collect()
    rss_delta = rss_bytes() - before
    assert index.mode == mode, (index.mode, mode)
    result: dict[str, Any] = {
        "n": n, "mode": mode, "build_s": round(build_s, 2),
        "build_vectors_per_s": round(n / build_s),
        "rss_delta_bytes": rss_delta, "nbytes": index.nbytes,
        "rss_mb_per_million": round(rss_delta / n * 1e6 / 2**20, 1),
        "theoretical_mb_per_million": round(index.nbytes / n * 1e6 / 2**20, 1),
    }
    n_recall = len(truth)
    lat, found = timed_queries(index, queries, lambda i: None)
    result["no_mask"] = {**lat, "recall_at_10": recall_at_k(found[:n_recall], truth)}
    lat, found = timed_queries(index, queries, masks.seen)
    for i in range(n_recall):
        assert not np.isin(found[i], masks.excluded[i]).any(), "seen mask violated"
    result["seen_mask"] = {**lat, "recall_at_10": recall_at_k(found[:n_recall], truth_seen)}
    lat, found = timed_queries(index, queries, lambda i: masks.one_percent)
    assert masks.one_percent[found[found >= 0]].all() and (found >= 0).all(), "1% mask violated or starved"
    result["one_percent_mask"] = {**lat, "recall_at_10": recall_at_k(found[:n_recall], truth_one)}
    if mode == "hnsw":
        result["ef_sweep"] = ef_sweep(index, queries[:n_recall], truth, args.ef_sweep)
        result["upsert"] = mutation_latency(index, base, args.seed)
    del index
    gc.collect()
    return result


def ef_sweep(index: VectorIndex, queries: np.ndarray, truth: np.ndarray, efs: list[int]) -> list[dict[str, Any]]:
    """Recall@10 and single-query latency (no mask) as efSearch varies; the graph is unchanged."""
    default, out = index.ef_search, []
    for ef in efs:
        index.ef_search = ef
        lat, found = timed_queries(index, queries, lambda i: None)
        out.append({"ef_search": ef, **lat, "recall_at_10": recall_at_k(found, truth)})
    index.ef_search = default
    return out


def mutation_latency(index: VectorIndex, base: np.ndarray, seed: int, count: int = 500) -> dict[str, Any]:
    """Single-vector upserts while serving: new keys, then replacements (tombstone + re-add)."""
    n, dim = base.shape
    fresh = mixture(count, dim, seed + 7, clusters=1024)  # any unit vectors do here
    new_s, replace_s = [], []
    for i in range(count):
        start = time.perf_counter()
        index.upsert([n + i], fresh[i])
        new_s.append(time.perf_counter() - start)
    for i in range(count):
        start = time.perf_counter()
        index.upsert([i], fresh[i])
        replace_s.append(time.perf_counter() - start)
    return {"new_key": percentiles(new_s), "replace": percentiles(replace_s)}


def run_size(n: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    started = time.perf_counter()
    base = mixture(n, args.dim, args.seed, args.clusters, args.intrinsic_dim)
    queries = mixture(args.queries, args.dim, args.seed + 1, args.clusters, args.intrinsic_dim)
    n_recall = min(args.recall_queries, args.queries)
    truth_wide = exact_top(base, queries[:n_recall], K + SEEN)
    truth = truth_wide[:, :K]
    masks = Masks(n, len(queries), truth, args.seed + 2)
    truth_seen = masked_truth(truth_wide, masks, n_recall)
    allowed_rows = np.flatnonzero(masks.one_percent)
    truth_one = allowed_rows[exact_top(base[allowed_rows], queries[:n_recall], K)]
    print(f"[{n:,}] data and ground truth in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
    results = []
    modes = (["exact"] if n <= args.exact_max_size else []) + ["hnsw"]
    for mode in modes:
        started = time.perf_counter()
        result = measure(mode, base, queries, truth, truth_seen, truth_one, masks, args)
        results.append(result)
        print(f"[{n:,}] {mode}: built in {result['build_s']}s, measured in "
              f"{time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
    return results


def exact_sweep(sizes: list[int], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Exact-mode latency by size (prefixes of one data set): where `exact_max` should sit."""
    base = mixture(max(sizes), args.dim, args.seed + 3, args.clusters, args.intrinsic_dim)
    queries = mixture(args.queries, args.dim, args.seed + 4, args.clusters, args.intrinsic_dim)
    out = []
    for n in sorted(sizes):
        index = VectorIndex(args.dim, exact_max=n)
        index.upsert(np.arange(n), base[:n])
        masks = Masks(n, len(queries), np.empty((0, K), dtype=np.int64), args.seed + 5)
        no_mask, _ = timed_queries(index, queries, lambda i: None)
        seen, _ = timed_queries(index, queries, masks.seen)
        out.append({"n": n, "no_mask": no_mask, "seen_mask": seen})
        print(f"[exact sweep] {n:,}: p50 {no_mask['p50_ms']} ms", file=sys.stderr, flush=True)
    return out


def machine_info() -> dict[str, Any]:
    return {**base_machine_info(), "numpy": np.__version__, "faiss": faiss.__version__,
            "faiss_omp_threads": faiss.omp_get_max_threads(), "faiss_simd": faiss.get_compile_options()}


def markdown(report: dict[str, Any]) -> str:
    def lat(entry: dict[str, Any]) -> str:
        return f"{entry['p50_ms']:.2f} / {entry['p99_ms']:.2f}"

    def rec(entry: dict[str, Any]) -> str:
        return f"{entry['recall_at_10']:.3f}"

    s = report["settings"]
    lines = [f"Measured {report['date'][:10]} on {report['machine']['cpu_count']} × "
             f"{report['machine']['cpu_model']} ({report['machine']['memory_gb']} GB); `{report['command']}` "
             f"({report['seconds']} s). dim {s['dim']}, HNSW M={s['m']}, efConstruction={s['ef_construction']}, "
             f"efSearch={s['ef_search']}; clusters with intrinsic dimension {s['intrinsic_dim'] or 'full (isotropic)'}; "
             f"{s['queries']} single queries, recall over {s['recall_queries']}; load average "
             f"{report['load_average_start'][0]} at start, {report['load_average_end'][0]} at end.", "",
             "| vectors | mode | build s | MB per 1M vectors (RSS / arrays) | no mask p50 / p99 ms | "
             "seen mask p50 / p99 ms | 1% mask p50 / p99 ms | recall@10 no mask / seen / 1% | "
             "upsert new / replace p50 ms |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        ups = r.get("upsert")
        upsert = f"{ups['new_key']['p50_ms']:.2f} / {ups['replace']['p50_ms']:.2f}" if ups else "–"
        lines.append(
            f"| {r['n']:,} | {r['mode']} | {r['build_s']:.1f} | {r['rss_mb_per_million']:,.0f} / "
            f"{r['theoretical_mb_per_million']:,.0f} | {lat(r['no_mask'])} | {lat(r['seen_mask'])} | "
            f"{lat(r['one_percent_mask'])} | {rec(r['no_mask'])} / {rec(r['seen_mask'])} / "
            f"{rec(r['one_percent_mask'])} | {upsert} |")
    sweeps = [r for r in report["results"] if r.get("ef_sweep")]
    if sweeps:
        efs = [e["ef_search"] for e in sweeps[0]["ef_sweep"]]
        lines += ["", "HNSW recall@10 / single-query p50 ms (no mask) by efSearch:", "",
                  "| vectors | " + " | ".join(f"ef {ef}" for ef in efs) + " |",
                  "|---:|" + "---:|" * len(efs)]
        for r in sweeps:
            cells = [f"{e['recall_at_10']:.3f} / {e['p50_ms']:.2f}" for e in r["ef_sweep"]]
            lines.append(f"| {r['n']:,} | " + " | ".join(cells) + " |")
    if report.get("exact_sweep"):
        lines += ["", "Exact mode (matrix product + argpartition) by size:", "",
                  "| vectors | no mask p50 / p99 ms | seen mask p50 / p99 ms |", "|---:|---:|---:|"]
        for r in report["exact_sweep"]:
            lines.append(f"| {r['n']:,} | {lat(r['no_mask'])} | {lat(r['seen_mask'])} |")
    return "\n".join(lines)


def main() -> None:
    defaults = VectorIndex(1)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--exact-max-size", type=int, default=100_000,
                        help="also measure the exact mode up to this size (default 100,000)")
    parser.add_argument("--exact-sweep", type=int, nargs="*", default=[5_000, 10_000, 20_000, 50_000, 100_000],
                        help="sizes for the exact-mode latency sweep (none to skip)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=1024)
    parser.add_argument("--intrinsic-dim", type=int, default=32,
                        help="within-cluster subspace dimension; 0 = isotropic clusters (worst case)")
    parser.add_argument("--ef-sweep", type=int, nargs="*", default=[64, 128, 256, 512],
                        help="efSearch values for a recall / latency curve of the HNSW mode")
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--recall-queries", type=int, default=300)
    parser.add_argument("--m", type=int, default=defaults.hnsw_m)
    parser.add_argument("--ef-construction", type=int, default=defaults.ef_construction)
    parser.add_argument("--ef-search", type=int, default=defaults.ef_search)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "index.json")
    args = parser.parse_args()

    started = time.perf_counter()
    report: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
        "machine": machine_info(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "settings": {"dim": args.dim, "clusters": args.clusters, "intrinsic_dim": args.intrinsic_dim,
                     "queries": args.queries,
                     "recall_queries": min(args.recall_queries, args.queries), "k": K, "seen_excluded": SEEN,
                     "m": args.m, "ef_construction": args.ef_construction, "ef_search": args.ef_search},
        "results": [],
    }
    if args.exact_sweep:
        report["exact_sweep"] = exact_sweep(args.exact_sweep, args)
    for n in args.sizes:
        report["results"].extend(run_size(n, args))
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report["peak_rss_mb"] = round(_peak_rss_mb())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    print(f"\nPeak RSS {report['peak_rss_mb']:,} MB. Raw results: {args.out}")


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
