"""Weighted reciprocal-rank fusion (Cormack, Clarke, Buettcher; SIGIR 2009).

Sources score on incomparable scales (decayed counts, probabilities, cosine), so we
fuse ranks: score(i) = sum over sources s of weight_s / (K + rank_s(i)), rank from 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kairos.sources.base import Candidates, top_k

RRF_K = 60.0


@dataclass(slots=True)
class Fused:
    """Fused scores of the proposed items only: a request's cost must not grow with the
    catalogue (arrays over every item cost 8 MB each at 1M items)."""

    items: np.ndarray  # every item some source proposed, ascending
    scores: np.ndarray  # their fused scores (positive), same order
    contributions: dict[str, np.ndarray]  # per source, over `items` (0: not proposed by it)
    ranked: dict[str, Candidates]  # what each source proposed, as it proposed it

    def pool(self) -> np.ndarray:
        """Every item some source proposed, ascending: the only ones that can score."""
        return self.items

    def score(self, item: int) -> float:
        """The item's fused score; 0 for an item no source proposed."""
        at = self._position(item)
        return float(self.scores[at]) if at is not None else 0.0

    def scores_of(self, items: np.ndarray) -> np.ndarray:
        """Fused scores of `items`, which must all have been proposed."""
        return self.scores[np.searchsorted(self.items, items)]

    def rescored(self, scores: np.ndarray) -> Fused:
        """The same candidates under other scores (over `items`)."""
        return Fused(self.items, scores, self.contributions, self.ranked)

    def top(self, n: int) -> list[tuple[int, float, list[str]]]:
        """The n best items: (index, score, sources by decreasing contribution)."""
        best = top_k(self.scores, n)  # ties: the lower position, so the lower index
        items = self.items[best.items]
        return [(item, score, self.sources_of(item))
                for item, score in zip(items.tolist(), best.scores.tolist(), strict=True)]

    def sources_of(self, item: int) -> list[str]:
        """The sources that proposed the item, by decreasing contribution."""
        at = self._position(item)
        if at is None:
            return []
        shares = {name: c[at] for name, c in self.contributions.items() if c[at] > 0}
        return sorted(shares, key=lambda name: -shares[name])

    def _position(self, item: int) -> int | None:
        at = int(np.searchsorted(self.items, item))
        return at if at < len(self.items) and self.items[at] == item else None


def reciprocal_rank_fusion(ranked: dict[str, Candidates], weights: dict[str, float],
                           k: float = RRF_K) -> Fused:
    """`k` flattens ranks: 60 (the paper's) for long lists; the small-log prior uses less."""
    used = [(name, candidates) for name, candidates in ranked.items()
            if weights.get(name, 0.0) > 0 and len(candidates.items)]
    if not used:
        empty = np.empty(0, dtype=np.int64)
        return Fused(empty, np.empty(0, dtype=np.float64), {}, ranked)
    values = [weights[name] / (k + 1.0 + np.arange(len(candidates.items))) for name, candidates in used]
    items, where = np.unique(np.concatenate([candidates.items for _, candidates in used]), return_inverse=True)
    scores = np.bincount(where, weights=np.concatenate(values), minlength=len(items))  # a source proposes an item once
    contributions: dict[str, np.ndarray] = {}
    start = 0
    for (name, candidates), share in zip(used, values, strict=True):
        contribution = np.zeros(len(items), dtype=np.float64)
        contribution[where[start:start + len(share)]] = share
        contributions[name] = contribution
        start += len(share)
    return Fused(items.astype(np.int64, copy=False), scores, contributions, ranked)
