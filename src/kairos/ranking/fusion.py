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
    scores: np.ndarray  # over the whole catalogue; 0 = proposed by no source
    contributions: dict[str, np.ndarray]  # per source, same shape
    ranked: dict[str, Candidates]  # what each source proposed, as it proposed it

    def pool(self) -> np.ndarray:
        """Every item some source proposed, ascending: the only ones that can score."""
        proposed = [c.items for c in self.ranked.values() if len(c.items)]
        return np.unique(np.concatenate(proposed)) if proposed else np.empty(0, dtype=np.int64)

    def top(self, n: int) -> list[tuple[int, float, list[str]]]:
        """The n best items: (index, score, sources by decreasing contribution). Chosen
        among the proposed items, not the catalogue: a request's cost must not grow with it."""
        pool = self.pool()
        best = top_k(self.scores[pool], n)  # ties: the lower position, so the lower index
        items = pool[best.items]
        return [(item, score, self.sources_of(item))
                for item, score in zip(items.tolist(), best.scores.tolist(), strict=True)]

    def sources_of(self, item: int) -> list[str]:
        """The sources that proposed the item, by decreasing contribution."""
        shares = {name: c[item] for name, c in self.contributions.items() if c[item] > 0}
        return sorted(shares, key=lambda name: -shares[name])


def reciprocal_rank_fusion(ranked: dict[str, Candidates], weights: dict[str, float], n_items: int,
                           k: float = RRF_K) -> Fused:
    """`k` flattens ranks: 60 (the paper's) for long lists; the small-log prior uses less."""
    scores = np.zeros(n_items, dtype=np.float64)
    contributions: dict[str, np.ndarray] = {}
    for name, candidates in ranked.items():
        weight = weights.get(name, 0.0)
        if weight <= 0 or len(candidates.items) == 0:
            continue
        values = weight / (k + 1.0 + np.arange(len(candidates.items)))
        share = np.zeros(n_items, dtype=np.float64)  # untouched pages cost nothing
        share[candidates.items] = values
        scores[candidates.items] += values  # a source proposes an item once
        contributions[name] = share
    return Fused(scores, contributions, ranked)
