"""`als`: matrix factorisation on implicit feedback, the user folded in live.

The item factors are fitted in the background (`kairos.models.als`); the user's factors
are solved from their recent sequence once per event (kept under their state's revision),
so the event acknowledged a moment ago counts. Items newer than the fit are not proposed
(semantic and the behaviour model's text rows cover them).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from kairos.sources.base import Candidates, UserContext, top_k
from kairos.sources.factor_index import FactorIndex
from kairos.state.online import OnlineState

VECTORS_KEPT = 100_000  # users whose folded-in factors are kept, least recently asked go first


class AlsSource:
    name = "als"

    def __init__(self, state: OnlineState, index_min_items: int = 0) -> None:
        self.state = state
        # user -> (the model, their state's revision, their factors or None)
        self._vectors: OrderedDict[str, tuple[Any, int, np.ndarray | None]] = OrderedDict()
        self.index = FactorIndex(index_min_items)

    def candidates(self, ctx: UserContext, k: int) -> Candidates:
        model = self.state.als
        if model is None or ctx.user is None:
            return Candidates.empty()
        vector = self.user_vector(ctx)
        if vector is None:
            return Candidates.empty()
        index = self.index.get(model, model.n_items,
                               lambda: (model.item_factors, np.arange(model.n_items, dtype=np.int64)))
        if index is not None:
            items, scores = index.search(vector, k, ctx.allowed)
            positive = scores > 0  # as below: an item the model does not like is not proposed
            found = Candidates(items[positive], scores[positive])
            if len(found.items) == k:
                return found
            # Fewer than k: a narrow filter the index's cells did not reach; score them all.
        return top_k(model.scores(vector, len(self.state.catalog)), k, ctx.allowed)

    def user_vector(self, ctx: UserContext) -> np.ndarray | None:
        model, user = self.state.als, ctx.user
        assert model is not None and user is not None
        kept = self._vectors.get(ctx.user_id)
        if kept is not None and kept[0] is model and kept[1] == user.revision:
            self._vectors.move_to_end(ctx.user_id)
            return kept[2]
        steps = user.recent
        vector = model.user_vector([s.item for s in steps], [s.weight for s in steps])
        self._vectors[ctx.user_id] = (model, user.revision, vector)
        if len(self._vectors) > VECTORS_KEPT:
            self._vectors.popitem(last=False)
        return vector

    def forget(self, user_id: str) -> None:
        self._vectors.pop(user_id, None)

    def explain(self, ctx: UserContext, item: int) -> str | None:
        return "liked by people with tastes like yours"
