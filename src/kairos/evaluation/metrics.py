"""Ranking metrics, computed exactly from the target's place among all items.

Ties are broken uniformly at random *in expectation*: with g items scored above
the target and t others tied with it, the target's 0-based rank is uniform on
g..g+t, and each metric is its mean over those ranks. So a target tied with the
whole catalogue at score 0 scores what a random ranking would, never a free hit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

HR_KS = (1, 5, 10, 20)
NDCG_KS = (5, 10, 20)


def target_rank(scores: np.ndarray, target: int, candidates: np.ndarray | None = None) -> tuple[int, int]:
    """(items scored above the target, other items tied with it), among `candidates`
    (a bool mask; the target always competes, masked or not)."""
    target_score = scores[target]
    if candidates is None:
        greater = int(np.count_nonzero(scores > target_score))
        tied = int(np.count_nonzero(scores == target_score)) - 1
    else:
        pool = scores[candidates]
        greater = int(np.count_nonzero(pool > target_score))
        tied = int(np.count_nonzero(pool == target_score)) - int(bool(candidates[target]))
    return greater, max(tied, 0)


def rank_metrics(greater: int, tied: int, hr_ks: Sequence[int] = HR_KS,
                 ndcg_ks: Sequence[int] = NDCG_KS) -> dict[str, float]:
    """HR@k, NDCG@k (one relevant item: 1/log2(rank+2)) and MRR for one target."""
    ranks = range(greater, greater + tied + 1)
    share = 1.0 / (tied + 1)
    out: dict[str, float] = {}
    for k in hr_ks:
        out[f"HR@{k}"] = share * max(0, min(k, greater + tied + 1) - greater)
    for k in ndcg_ks:
        out[f"NDCG@{k}"] = share * sum(1.0 / math.log2(r + 2) for r in ranks if r < k)
    # MRR over a long tie: the harmonic sum, in closed form beyond a few thousand terms.
    if tied < 5000:
        out["MRR"] = share * sum(1.0 / (r + 1) for r in ranks)
    else:
        out["MRR"] = share * (_harmonic(greater + tied + 1) - _harmonic(greater))
    return out


def list_metrics(recommended: Sequence[int], target: int, k: int = 10) -> dict[str, float]:
    """HR@k and NDCG@k of a served list against the item the user then chose."""
    top = list(recommended[:k])
    if target not in top:
        return {f"HR@{k}": 0.0, f"NDCG@{k}": 0.0}
    position = top.index(target)
    return {f"HR@{k}": 1.0, f"NDCG@{k}": 1.0 / math.log2(position + 2)}


def mean_metrics(rows: Iterable[dict[str, float]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    count = 0
    for row in rows:
        count += 1
        for key, value in row.items():
            totals[key] = totals.get(key, 0.0) + value
    return {key: value / count for key, value in totals.items()} if count else {}


def coverage(lists: Iterable[Sequence[int]], n_items: int) -> float:
    """Share of the catalogue that appears in at least one list."""
    shown: set[int] = set()
    for items in lists:
        shown.update(items)
    return len(shown) / n_items if n_items else 0.0


def novelty(lists: Iterable[Sequence[int]], interaction_counts: np.ndarray) -> float:
    """Mean self-information -log2 p(i) of recommended items, p from training counts
    (add-one smoothed, so a never-seen item is maximally novel, not infinite)."""
    probability = (interaction_counts + 1.0) / (interaction_counts.sum() + len(interaction_counts))
    information = -np.log2(probability)
    values = [float(information[list(items)].mean()) for items in lists if len(items)]
    return float(np.mean(values)) if values else 0.0


def intra_list_diversity(lists: Iterable[Sequence[int]], categories: Sequence[frozenset[str]]) -> float:
    """Mean over lists of the mean pairwise category distance (1 - Jaccard)."""
    values = []
    for items in lists:
        items = list(items)
        if len(items) < 2:
            continue
        distances = []
        for a in range(len(items)):
            for b in range(a + 1, len(items)):
                left, right = categories[items[a]], categories[items[b]]
                union = left | right
                distances.append(1.0 - len(left & right) / len(union) if union else 0.0)
        values.append(sum(distances) / len(distances))
    return float(np.mean(values)) if values else 0.0


def _harmonic(n: int) -> float:
    if n == 0:
        return 0.0
    return math.log(n) + 0.5772156649015329 + 1.0 / (2 * n) - 1.0 / (12 * n * n)
