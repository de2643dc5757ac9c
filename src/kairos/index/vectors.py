"""Inner-product search over unit vectors keyed by catalogue index.

Small indexes are searched exactly (a matrix product plus a partial sort), which is exact,
needs no build, and applies the per-request masks the engine passes for free. A single-query
scan costs ~0.08 ms per 1,000 vectors of dim 384 (benchmarks/index.py), so past `exact_max`
vectors the index switches to faiss HNSW (~0.5 ms at 100k, ~1 ms at 1M), where a search-time
ID selector applies the same masks.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

FORMAT_VERSION = 1
# A filtered HNSW walk visits ~n/allowed nodes per hit, so its cost grows like ef * n / allowed
# while brute force over the allowed rows grows like allowed: masks allowing at most
# sqrt(SUBSET_COST_RATIO * ef * n) keys are answered exactly (the ratio is measured; see
# benchmarks/index.py).
SUBSET_COST_RATIO = 16.0
# Batches of at most this many queries skip BLAS (see _inner_products).
BLAS_MIN_QUERIES = 8
# Upper bound on the HNSW beam when a mask is selective (efSearch grows as 1/selectivity).
EF_SEARCH_CAP = 2_048
_ANY_LIVE = (0, 1 << 62)  # IDSelectorRange admitting every key but the tombstone label -1

Keys = np.ndarray | Sequence[int]


class VectorIndex:
    """Unit vectors under non-negative int keys, searched by inner product.

    Exact mode stores rows compactly (`_rows[:n]`, their keys in `_row_keys`), so memory and
    scan time follow the number of vectors, not the largest key. HNSW mode keeps vectors in
    faiss (IndexIDMap over IndexHNSWFlat); HNSW cannot delete, so a replaced or removed vector
    becomes a tombstone (its id_map label is set to -1) and the graph is rebuilt once
    tombstones pass `rebuild_share` of it. `_slot[key]` is the key's row (exact) or faiss
    internal id (HNSW), -1 when absent.
    """

    def __init__(
        self,
        dim: int,
        exact_max: int = 20_000,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 128,
        *,
        rebuild_share: float = 0.25,
    ) -> None:
        if dim <= 0:
            raise ValueError("dim must be positive")
        self.dim = dim
        self.exact_max = exact_max
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.rebuild_share = rebuild_share
        self._lock = threading.RLock()
        self._slot = np.full(0, -1, dtype=np.int64)
        self._count = 0
        self._rows = np.zeros((0, dim), dtype=np.float32)
        self._row_keys = np.zeros(0, dtype=np.int64)
        self._hnsw: faiss.IndexIDMap | None = None
        self._graph: faiss.IndexHNSWFlat | None = None
        self._flat: faiss.IndexFlat | None = None
        self._dead = 0
        self.generation = 0  # changes with every upsert or removal: results kept elsewhere expire

    # ------------------------------------------------------------------ inspection

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, int | np.integer):
            return False
        slot = self._slot
        return 0 <= int(key) < len(slot) and bool(slot[int(key)] >= 0)

    @property
    def mode(self) -> Literal["exact", "hnsw"]:
        return "exact" if self._hnsw is None else "hnsw"

    @property
    def tombstones(self) -> int:
        return self._dead

    def keys(self) -> np.ndarray:
        """The stored keys, ascending."""
        with self._lock:
            return np.flatnonzero(self._slot >= 0)

    def vector(self, key: int) -> np.ndarray | None:
        with self._lock:
            if key not in self:
                return None
            return self._stored()[self._slot[int(key)]].copy()

    def vectors_of(self, keys: Keys) -> np.ndarray:
        """Rows for keys, zeros where a key has no vector (so they add nothing to a sum)."""
        keys = np.asarray(keys, dtype=np.int64).reshape(-1)
        with self._lock:
            ok = (keys >= 0) & (keys < len(self._slot))
            slots = np.full(len(keys), -1, dtype=np.int64)
            slots[ok] = self._slot[keys[ok]]
            has = slots >= 0
            if has.all():  # the usual case: every key has a row, one gather
                return self._stored()[slots]
            out = np.zeros((len(keys), self.dim), dtype=np.float32)
            if has.any():
                out[has] = self._stored()[slots[has]]
            return out

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays (faiss structures included)."""
        with self._lock:
            total = self._slot.nbytes + self._rows.nbytes + self._row_keys.nbytes
            if self._hnsw is not None and self._graph is not None:
                hnsw = self._graph.hnsw
                n = self._hnsw.ntotal
                total += n * self.dim * 4 + n * 8  # flat storage + id_map
                total += hnsw.neighbors.size() * 4 + hnsw.offsets.size() * 8 + hnsw.levels.size() * 4
            return total

    # ------------------------------------------------------------------ mutation

    def upsert(self, keys: Keys, vectors: np.ndarray) -> None:
        """Add or replace vectors (normalised to unit length; zero vectors stay zero)."""
        keys, vectors = self._validated(keys, vectors)
        if len(keys) == 0:
            return
        with self._lock:
            self.generation += 1
            self._reserve(int(keys[-1]) + 1)
            if self._hnsw is None:
                added = int((self._slot[keys] < 0).sum())
                if self._count + added > self.exact_max:
                    self._build_hnsw(*self._merged(keys, vectors))
                else:
                    self._exact_upsert(keys, vectors)
            else:
                self._hnsw_upsert(keys, vectors)
                self._maybe_rebuild()

    def remove(self, keys: Keys) -> int:
        """Drop keys (unknown ones are ignored); returns how many were stored."""
        keys = np.unique(np.asarray(keys, dtype=np.int64).reshape(-1))
        with self._lock:
            keys = keys[(keys >= 0) & (keys < len(self._slot))]
            keys = keys[self._slot[keys] >= 0]
            if len(keys) == 0:
                return 0
            self.generation += 1
            if self._hnsw is None:
                for key in keys.tolist():
                    self._exact_remove_one(key)
            else:
                self._tombstone(self._slot[keys])
                self._slot[keys] = -1
                self._count -= len(keys)
                self._maybe_rebuild()
            return len(keys)

    # ------------------------------------------------------------------ search

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k keys by inner product per query, best first: (keys, scores), both (q, k).

        `allowed` is a bool mask over keys (keys past its end are not allowed). Rows with
        fewer than k results are padded with key -1 and score -inf.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q.reshape(1, -1)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (dim,) or (q, dim) with dim={self.dim}")
        if not np.isfinite(q).all():
            raise ValueError("queries must be finite")
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=bool).reshape(-1)
        if k <= 0 or len(q) == 0:
            return _padding(len(q), max(k, 0))
        with self._lock:
            if self._count == 0:
                return _padding(len(q), k)
            if self._hnsw is None:
                n = self._count
                return _scan(q, k, self._rows[:n], self._row_keys[:n], self._padded(allowed))
            return self._hnsw_search(q, k, allowed)

    # ------------------------------------------------------------------ persistence

    def save(self, path: Path) -> None:
        """Write the index to directory `path`, replacing it only once fully written."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
        tmp.mkdir()
        try:
            with self._lock:
                meta = {
                    "format": FORMAT_VERSION,
                    "dim": self.dim,
                    "exact_max": self.exact_max,
                    "hnsw_m": self.hnsw_m,
                    "ef_construction": self.ef_construction,
                    "ef_search": self.ef_search,
                    "rebuild_share": self.rebuild_share,
                    "mode": self.mode,
                    "count": self._count,
                }
                if self._hnsw is None:
                    n = self._count
                    np.save(tmp / "keys.npy", self._row_keys[:n])
                    np.save(tmp / "vectors.npy", self._rows[:n])
                else:
                    faiss.write_index(self._hnsw, str(tmp / "hnsw.faiss"))
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            _replace_dir(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, path: Path) -> VectorIndex:
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported vector index format {meta.get('format')!r} in {path}")
        index = cls(
            meta["dim"],
            exact_max=meta["exact_max"],
            hnsw_m=meta["hnsw_m"],
            ef_construction=meta["ef_construction"],
            ef_search=meta["ef_search"],
            rebuild_share=meta["rebuild_share"],
        )
        if meta["mode"] == "exact":
            keys = np.load(path / "keys.npy")
            rows = np.load(path / "vectors.npy")
            if len(keys):
                index._reserve(int(keys.max()) + 1)
                index._exact_append(keys, rows)
        else:
            hnsw = faiss.read_index(str(path / "hnsw.faiss"))
            index._adopt(hnsw)
            labels = faiss.vector_to_array(hnsw.id_map)
            live = labels >= 0
            if live.any():
                index._reserve(int(labels[live].max()) + 1)
            index._slot[labels[live]] = np.flatnonzero(live)
            index._count = int(live.sum())
            index._dead = int((~live).sum())
        if index._count != meta["count"]:
            raise ValueError(f"vector index at {path} is inconsistent: {index._count} != {meta['count']}")
        return index

    # ------------------------------------------------------------------ internals

    def _validated(self, keys: Keys, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keys sorted and unique (the last vector of a repeated key wins), rows normalised
        in a private copy."""
        keys = np.asarray(keys, dtype=np.int64).reshape(-1)
        vectors = np.array(vectors, dtype=np.float32, order="C")  # copy: normalised in place
        if vectors.ndim == 1 and len(keys) == 1:
            vectors = vectors.reshape(1, -1)
        if vectors.shape != (len(keys), self.dim):
            raise ValueError(f"vectors must have shape ({len(keys)}, {self.dim}), got {vectors.shape}")
        if len(keys) and keys.min() < 0:
            raise ValueError("keys must be non-negative")
        if not np.isfinite(vectors).all():
            raise ValueError("vectors must be finite")
        if len(keys) > 1 and not (np.diff(keys) > 0).all():
            unique, last_in_reversed = np.unique(keys[::-1], return_index=True)
            keys, vectors = unique, vectors[len(keys) - 1 - last_in_reversed]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        np.divide(vectors, norms, out=vectors, where=norms > 0)
        return keys, vectors

    def _reserve(self, key_end: int) -> None:
        if key_end > len(self._slot):
            grown = np.full(max(key_end, 2 * len(self._slot), 1024), -1, dtype=np.int64)
            grown[: len(self._slot)] = self._slot
            self._slot = grown

    def _stored(self) -> np.ndarray:
        """All stored rows, addressed by slot (a view; faiss's one dies with the next add)."""
        if self._flat is None or self._hnsw is None:
            return self._rows
        n = self._hnsw.ntotal
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return faiss.rev_swig_ptr(self._flat.get_xb(), n * self.dim).reshape(n, self.dim)

    def _labels(self) -> np.ndarray:
        """Writable view of the faiss id_map: internal id -> key, -1 for tombstones."""
        assert self._hnsw is not None
        n = self._hnsw.ntotal
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        return faiss.rev_swig_ptr(self._hnsw.id_map.data(), n)

    def _live(self) -> tuple[np.ndarray, np.ndarray]:
        keys = np.flatnonzero(self._slot >= 0)
        return keys, np.ascontiguousarray(self._stored()[self._slot[keys]])

    def _merged(self, keys: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stored vectors overridden and extended by these, by ascending key (no copy of
        `vectors` when nothing is stored yet, the bulk-load case)."""
        kept = np.flatnonzero(self._slot >= 0)
        kept = kept[~np.isin(kept, keys)]
        if len(kept) == 0:
            return keys, vectors
        all_keys = np.concatenate([kept, keys])
        order = np.argsort(all_keys, kind="stable")
        return all_keys[order], np.concatenate([self._stored()[self._slot[kept]], vectors])[order]

    def _padded(self, allowed: np.ndarray | None) -> np.ndarray | None:
        """`allowed` as a mask of len(_slot) + 1 whose last entry is False, so indexing it
        with any stored key or the tombstone label -1 is safe."""
        if allowed is None:
            return None
        out = np.zeros(len(self._slot) + 1, dtype=bool)
        m = min(len(allowed), len(self._slot))
        out[:m] = allowed[:m]
        return out

    # exact mode

    def _exact_append(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        n, m = self._count, len(keys)
        if n + m > len(self._rows):
            cap = max(n + m, 2 * len(self._rows), 1024)
            rows = np.zeros((cap, self.dim), dtype=np.float32)
            rows[:n] = self._rows[:n]
            row_keys = np.full(cap, -1, dtype=np.int64)
            row_keys[:n] = self._row_keys[:n]
            self._rows, self._row_keys = rows, row_keys
        self._rows[n : n + m] = vectors
        self._row_keys[n : n + m] = keys
        self._slot[keys] = np.arange(n, n + m)
        self._count = n + m

    def _exact_upsert(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        slots = self._slot[keys]
        known = slots >= 0
        self._rows[slots[known]] = vectors[known]
        if not known.all():
            self._exact_append(keys[~known], vectors[~known])

    def _exact_remove_one(self, key: int) -> None:
        # Move the last row into the hole so rows stay compact.
        row, last = int(self._slot[key]), self._count - 1
        if row != last:
            moved = int(self._row_keys[last])
            self._rows[row] = self._rows[last]
            self._row_keys[row] = moved
            self._slot[moved] = row
        self._rows[last] = 0
        self._row_keys[last] = -1
        self._slot[key] = -1
        self._count = last

    # HNSW mode

    def _adopt(self, hnsw: faiss.IndexIDMap) -> None:
        self._hnsw = hnsw
        self._graph = faiss.downcast_index(hnsw.index)
        self._flat = faiss.downcast_index(self._graph.storage)
        self._rows = np.zeros((0, self.dim), dtype=np.float32)
        self._row_keys = np.zeros(0, dtype=np.int64)

    def _build_hnsw(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        graph = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = self.ef_construction
        graph.hnsw.efSearch = self.ef_search
        hnsw = faiss.IndexIDMap(graph)
        hnsw.add_with_ids(vectors, keys)
        self._adopt(hnsw)
        self._slot[:] = -1
        self._slot[keys] = np.arange(len(keys))
        self._count = len(keys)
        self._dead = 0

    def _hnsw_upsert(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        assert self._hnsw is not None
        slots = self._slot[keys]
        known = slots >= 0
        if known.any():
            same = np.zeros(len(keys), dtype=bool)
            same[known] = (self._stored()[slots[known]] == vectors[known]).all(axis=1)
            self._tombstone(slots[known & ~same])
            keys, vectors, known = keys[~same], vectors[~same], known[~same]
        if len(keys) == 0:
            return
        start = self._hnsw.ntotal
        self._hnsw.add_with_ids(vectors, keys)
        self._slot[keys] = np.arange(start, start + len(keys))
        self._count += int((~known).sum())

    def _tombstone(self, slots: np.ndarray) -> None:
        if len(slots):
            self._labels()[slots] = -1
            self._dead += len(slots)

    def _maybe_rebuild(self) -> None:
        assert self._hnsw is not None
        if self._dead <= self.rebuild_share * self._hnsw.ntotal:
            return
        keys, vectors = self._live()
        if len(keys) <= self.exact_max:
            self._hnsw = self._graph = self._flat = None
            self._dead = 0
            self._slot[:] = -1
            self._count = 0
            self._exact_append(keys, vectors)
        else:
            self._build_hnsw(keys, vectors)

    def _hnsw_search(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        assert self._hnsw is not None
        padded = self._padded(allowed)
        bits: np.ndarray | None = None  # must outlive the search: the selector points into it
        if padded is None:
            wanted = self._count
            selector = faiss.IDSelectorRange(*_ANY_LIVE) if self._dead else None
        else:
            live = padded[:-1] & (self._slot >= 0)
            wanted = int(np.count_nonzero(live))
            if wanted == 0:
                return _padding(len(q), k)
            if wanted * wanted <= SUBSET_COST_RATIO * max(self.ef_search, k) * self._count:
                candidates = np.flatnonzero(live)
                rows = np.take(self._stored(), self._slot[candidates], axis=0)  # faster than [] here
                return _scan(q, k, rows, candidates, None)
            bits = np.packbits(live, bitorder="little")
            # The IndexIDMap translates internal ids to keys before asking the selector, so
            # the bitmap is over keys; tombstones translate to -1, never a member.
            selector = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
        ef = max(self.ef_search, k)
        if wanted < self._count:
            ef = min(int(ef * self._count / wanted) + 1, max(EF_SEARCH_CAP, ef))
        kk = min(k, wanted)
        params = faiss.SearchParametersHNSW(efSearch=ef)
        if selector is not None:
            params.sel = selector
        if len(q) == 1:
            # One query gains nothing from faiss's OpenMP team, and on a busy machine waiting
            # for a descheduled team member multiplied p99 (thread-local setting).
            previous = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                scores, keys = self._hnsw.search(q, kk, params=params)
            finally:
                faiss.omp_set_num_threads(previous)
        else:
            scores, keys = self._hnsw.search(q, kk, params=params)
        del bits
        scores[keys < 0] = -np.inf
        starved = np.flatnonzero((keys >= 0).sum(axis=1) < kk)
        if len(starved):
            exact_keys, exact_scores = _scan(q[starved], kk, self._stored(), self._labels(), padded)
            keys[starved], scores[starved] = exact_keys, exact_scores
        if kk < k:
            pad_keys, pad_scores = _padding(len(q), k - kk)
            keys, scores = np.hstack([keys, pad_keys]), np.hstack([scores, pad_scores])
        return keys, scores


def _padding(q: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((q, k), -1, dtype=np.int64), np.full((q, k), -np.inf, dtype=np.float32)


def _scan(
    q: np.ndarray, k: int, rows: np.ndarray, labels: np.ndarray, padded: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over `rows` (keyed by `labels`, -1 = dead), keeping rows whose key is allowed."""
    valid = labels >= 0
    if padded is not None:
        valid &= padded[labels]
    n_valid = int(valid.sum())
    if n_valid == 0:
        return _padding(len(q), k)
    if n_valid == len(labels):
        scores, ids = _inner_products(q, rows), labels
    elif n_valid <= len(labels) // 4:
        # Few survivors: multiply only their rows.
        chosen = np.flatnonzero(valid)
        scores, ids = _inner_products(q, np.take(rows, chosen, axis=0)), labels[chosen]
    else:
        scores, ids = _inner_products(q, rows), labels
        scores[:, ~valid] = -np.inf
    return _top_k_rows(scores, k, ids)


def _inner_products(q: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """q @ rows.T, for a few queries with faiss's single-threaded SIMD kernel: OpenBLAS's
    thread pool answered a matrix-vector product no sooner than the next scheduler tick
    (8 ms on a busy 2-core machine, whatever the size), and is no faster when idle."""
    if len(q) > BLAS_MIN_QUERIES or len(rows) == 0:
        return q @ rows.T
    rows = np.ascontiguousarray(rows)
    out = np.empty((len(q), len(rows)), dtype=np.float32)
    for i in range(len(q)):
        faiss.fvec_inner_products_ny(
            faiss.swig_ptr(out[i]), faiss.swig_ptr(q[i]), faiss.swig_ptr(rows), rows.shape[1], len(rows)
        )
    return out


def _top_k_rows(scores: np.ndarray, k: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k best columns by score (ties: lower id), as (ids, scores) padded to k."""
    q, m = scores.shape
    kk = min(k, m)
    if kk < m:
        cols = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    else:
        cols = np.broadcast_to(np.arange(m), (q, m))
    best = np.take_along_axis(scores, cols, axis=1)
    best_ids = ids[cols]
    order = np.lexsort((best_ids, -best), axis=-1)
    best = np.take_along_axis(best, order, axis=1).astype(np.float32, copy=False)
    best_ids = np.take_along_axis(best_ids, order, axis=1)
    best_ids[~np.isfinite(best)] = -1
    if kk < k:
        pad_ids, pad_scores = _padding(q, k - kk)
        best_ids, best = np.hstack([best_ids, pad_ids]), np.hstack([best, pad_scores])
    return best_ids, best


def _replace_dir(new: Path, path: Path) -> None:
    """Move `new` to `path`; an existing `path` is swapped out first and then deleted."""
    if not path.exists():
        os.rename(new, path)
        return
    old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex}")
    os.rename(path, old)
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)
