"""Weighted reciprocal-rank fusion (Cormack, Clarke, Buettcher; SIGIR 2009).

Sources score on incomparable scales (decayed counts, probabilities, cosine), so we
fuse ranks: score(i) = sum over sources s of weight_s / (K + rank_s(i)).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kairos.sources.base import Candidates

RRF_K = 60.0


@dataclass(slots=True)
class FusedItem:
    item: int
    score: float
    sources: list[str] = field(default_factory=list)  # strongest contribution first
    contributions: dict[str, float] = field(default_factory=dict)


def reciprocal_rank_fusion(
    ranked: dict[str, Candidates], weights: dict[str, float], n: int
) -> list[FusedItem]:
    fused: dict[int, FusedItem] = {}
    for name, candidates in ranked.items():
        weight = weights.get(name, 0.0)
        if weight <= 0:
            continue
        for rank, item in enumerate(candidates.items.tolist()):
            entry = fused.get(item)
            if entry is None:
                entry = fused[item] = FusedItem(item, 0.0)
            share = weight / (RRF_K + rank + 1)
            entry.score += share
            entry.contributions[name] = share
    best = sorted(fused.values(), key=lambda f: (-f.score, f.item))[:n]
    for entry in best:
        entry.sources = sorted(entry.contributions, key=lambda s: -entry.contributions[s])
    return best
