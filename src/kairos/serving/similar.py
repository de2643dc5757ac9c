"""Items like this one: co-visited, nearest in text, or both fused; topped up with the
most popular of its categories."""

from __future__ import annotations

import uuid

import numpy as np

from kairos.errors import NotFound
from kairos.ranking import reciprocal_rank_fusion
from kairos.schema import RecommendedItem, SimilarItems
from kairos.serving.view import ServingView
from kairos.sources import Candidates, CovisitSource, UserContext

SIMILAR_METHODS = ("hybrid", "semantic", "covisit")
SIMILAR_REASONS = {
    "covisit": "often chosen right after '{title}'",
    "semantic": "described like '{title}'",
    "popular": "popular in the same category as '{title}'",
}
# Behaviour leads ties with text (hybrid interleaves them); popular only fills.
SIMILAR_WEIGHTS = {"covisit": 1000.0, "semantic": 900.0, "popular": 1.0}


def similar(view: ServingView, item_id: str, n: int = 10, request_id: str | None = None,
            method: str = "hybrid") -> SimilarItems:
    """`method`: `covisit` (chosen right after it), `semantic` (described like it) or
    `hybrid` (both)."""
    if method not in SIMILAR_METHODS:
        raise ValueError(f"method must be one of {', '.join(SIMILAR_METHODS)}")
    view.catch_up()
    with view.lock:
        catalog, semantic = view.catalog, view.semantic
        idx = catalog.index.get(item_id)
        if idx is None:
            raise NotFound("item", item_id)
        allowed = catalog.available.copy()
        allowed[idx] = False
        ranked: dict[str, Candidates] = {}
        if method in ("covisit", "hybrid"):
            covisit = view.sources["covisit"]
            assert isinstance(covisit, CovisitSource)
            ranked["covisit"] = covisit.from_seeds([(idx, 1.0)], allowed, n)
        vector = semantic.item_vector(idx) if semantic is not None else None
        if method in ("semantic", "hybrid") and vector is not None:
            assert semantic is not None and semantic.index is not None
            keys, scores = semantic.index.search(vector, n, allowed)
            found = keys[0] >= 0
            ranked["semantic"] = Candidates(keys[0][found].astype(np.int64), scores[0][found])
        if sum(len(c.items) for c in ranked.values()) < n and catalog.categories[idx]:
            same_category = np.zeros_like(allowed)
            for name in catalog.categories[idx]:
                same_category |= catalog.category_mask(name)
            ctx = UserContext("", view.clock.now(), None, allowed & same_category)
            ranked["popular"] = view.sources["popular"].candidates(ctx, n)
        fused = reciprocal_rank_fusion(ranked, SIMILAR_WEIGHTS)
        title = catalog.titles[idx] or item_id
        items = [
            RecommendedItem(
                item_id=catalog.ids[item], score=_score_of(ranked[sources[0]], item),
                sources=sources, title=catalog.titles[item],
                reason=SIMILAR_REASONS[sources[0]].format(title=title),
            )
            for item, _, sources in fused.top(n)
        ]
        model_version = view.model_version
    return SimilarItems(item_id=item_id, items=items, model_version=model_version,
                        request_id=request_id or uuid.uuid4().hex)


def _score_of(found: Candidates, item: int) -> float:
    return float(found.scores[np.flatnonzero(found.items == item)[0]])
