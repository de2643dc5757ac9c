"""`semantic`: items whose text embedding is nearest the user's semantic profile.

Serves cold start: a new item is retrievable as soon as it is encoded, and a new
user is served from stated interests or their first event.
"""

from __future__ import annotations

import numpy as np

from kairos.sources.base import Candidates, UserContext, action_phrase
from kairos.state.online import OnlineState

EXPLAIN_FROM_LAST = 20  # recent positive visits searched for the closest one


class SemanticSource:
    name = "semantic"

    def __init__(self, state: OnlineState) -> None:
        self.state = state

    def candidates(self, ctx: UserContext, k: int) -> Candidates:
        semantic = self.state.semantic
        if semantic is None or semantic.index is None or len(semantic.index) == 0:
            return Candidates.empty()
        profile = semantic.profile(ctx.user_id)
        if profile is None:
            return Candidates.empty()
        keys, scores = semantic.index.search(profile, k, ctx.allowed)
        found = keys[0] >= 0
        return Candidates(keys[0][found].astype(np.int64), scores[0][found].astype(np.float64))

    def explain(self, ctx: UserContext, item: int) -> str | None:
        """Name the liked item closest to this one, or the stated interests."""
        semantic = self.state.semantic
        if semantic is None:
            return None
        target = semantic.item_vector(item)
        if target is None:
            return None
        best, best_score = None, -2.0
        if ctx.user is not None:
            for step in reversed(ctx.user.recent[-4 * EXPLAIN_FROM_LAST:]):
                if step.weight <= 0 or step.item == item:
                    continue
                vector = semantic.item_vector(step.item)
                if vector is not None and (score := float(vector @ target)) > best_score:
                    best, best_score = step, score
        stated = semantic.stated.get(ctx.user_id)
        if stated is not None and float(stated @ target) > best_score:
            text = semantic.stated_text.get(ctx.user_id, "")
            return f"matches your interests: “{text[:60]}{'…' if len(text) > 60 else ''}”"
        if best is None:
            return None
        return f"similar to '{self.state.catalog.titles[best.item] or self.state.catalog.ids[best.item]}', " \
               f"which you {action_phrase(best.type, best.value)}"
