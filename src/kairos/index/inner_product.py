"""The items with the largest inner product with a query, without scoring every item.

Factor models (ALS, the behaviour model) score item j for a user as q . v_j, with vectors
of any length. Past `exact_max` items the vectors go into a faiss inverted file
(IVF-Flat, inner product): k-means cells, of which a query scans the `nprobe` whose
centroids score highest. Fitted factors cluster, and there it finds the exact top 60 of
100k items at ~0.1 ms (recall 0.98-1.0 at nprobe 8-32, benchmarks/catalogue.py); on
structureless random vectors no such index works. The products it returns are exact
(IVF-Flat keeps whole vectors): only which items it looks at is approximate. Building costs seconds, not HNSW's minutes, so a new model can build
its own when it loads.
"""

from __future__ import annotations

import faiss
import numpy as np

CELL_TRAINING_POINTS = 50  # k-means points per cell (faiss warns below 39)


class InnerProductIndex:
    def __init__(self, vectors: np.ndarray, keys: np.ndarray, exact_max: int = 50_000, nprobe: int = 32) -> None:
        """`vectors[i]` belongs to non-negative int key `keys[i]`."""
        self._vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._keys = np.asarray(keys, dtype=np.int64)
        self._ivf: faiss.IndexIVFFlat | None = None
        self.nprobe = nprobe
        n, dim = self._vectors.shape
        if n > exact_max:
            cells = max(1, min(int(4 * np.sqrt(n)), n // CELL_TRAINING_POINTS))
            sample = np.random.default_rng(0).choice(n, min(n, CELL_TRAINING_POINTS * cells), replace=False)
            self._ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
            self._ivf.train(self._vectors[np.sort(sample)])
            self._ivf.add_with_ids(self._vectors, self._keys)
            self._vectors = np.empty((0, dim), dtype=np.float32)  # faiss holds them (memory: once)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def mode(self) -> str:
        return "exact" if self._ivf is None else "ivf"

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Up to k allowed keys with the largest inner products, best first (ties: lower
        key), and those products. `allowed`: bool over keys (keys past its end are not)."""
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if k <= 0 or not len(self._keys):
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
        if self._ivf is None:
            keys, vectors = self._keys, self._vectors
            if allowed is not None:
                ok = self._keys < len(allowed)
                ok[ok] = allowed[self._keys[ok]]
                keys, vectors = keys[ok], vectors[ok]
            scores = vectors @ query[0]
            if len(keys) > k:
                part = np.argpartition(-scores, k - 1)[:k]
                keys, scores = keys[part], scores[part]
        else:
            params = faiss.SearchParametersIVF(nprobe=self.nprobe)
            bits = None  # must outlive the search: the selector points into it
            if allowed is not None:
                bits = np.packbits(np.asarray(allowed, dtype=bool), bitorder="little")
                params.sel = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
            scores, found = self._ivf.search(query, k, params=params)
            del bits
            keep = found[0] >= 0
            keys, scores = found[0][keep], scores[0][keep]
        scores = scores.astype(np.float64)
        order = np.lexsort((keys, -scores))
        return keys[order], scores[order]
