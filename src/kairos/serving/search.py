"""Semantic search over available items; with a user, the query leans toward their profile."""

from __future__ import annotations

import uuid

import numpy as np

from kairos.errors import FeatureDisabled
from kairos.schema import RecommendedItem, SearchResults
from kairos.serving.view import ServingView

# How far a personalised search query leans toward the user's profile.
PERSONAL_SEARCH_SHARE = 0.3


def search(view: ServingView, query: str, n: int = 10, user_id: str | None = None,
           request_id: str | None = None) -> SearchResults:
    semantic = view.semantic
    if semantic is None:
        raise FeatureDisabled("semantic search needs the language-model layer (KAIROS_SEMANTIC_ENABLED)")
    view.catch_up()
    with view.lock:
        vector = semantic.encoder.encode([query])[0]
        if user_id is not None:
            profile = semantic.profile(user_id)
            if profile is not None:
                vector = vector + PERSONAL_SEARCH_SHARE * profile
                vector = vector / np.linalg.norm(vector)
        items: list[RecommendedItem] = []
        catalog = view.catalog
        if semantic.index is not None and len(semantic.index):
            keys, scores = semantic.index.search(vector, n, catalog.available)
            items = [
                RecommendedItem(item_id=catalog.ids[key], score=float(score), sources=["semantic"],
                                title=catalog.titles[key], reason=f"matches “{query[:60]}”")
                for key, score in zip(keys[0].tolist(), scores[0].tolist(), strict=True) if key >= 0
            ]
        model_version = view.model_version
    return SearchResults(query=query, user_id=user_id, items=items, model_version=model_version,
                         request_id=request_id or uuid.uuid4().hex)
