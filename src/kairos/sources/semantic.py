"""`semantic`: items whose text embedding is nearest the user's semantic profile.

Serves cold start: a new item is retrievable as soon as it is encoded, and a new
user is served from stated interests or their first event.

A profile changes only with the user's events and stated interests, so the nearest
items are searched once per profile: the search over the whole index (without the
request's mask) is kept with the profile and the index's generation, and each request
filters it by its own mask; only a mask that leaves too few searches again.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from kairos.sources.base import Candidates, UserContext, action_phrase
from kairos.state.online import OnlineState

EXPLAIN_FROM_LAST = 20  # recent positive visits searched for the closest one
SEARCHES_KEPT = 20_000  # users whose unmasked search is kept, least recently asked go first


EXPLAIN_KEY = "semantic.liked"  # UserContext.extra: what `explain` reads once per request


class SemanticSource:
    name = "semantic"

    def __init__(self, state: OnlineState) -> None:
        self.state = state
        # user -> (profile, index generation, keys, scores): the unmasked nearest items
        self._kept: OrderedDict[str, tuple[np.ndarray, int, np.ndarray, np.ndarray]] = OrderedDict()

    def candidates(self, ctx: UserContext, k: int) -> Candidates:
        semantic = self.state.semantic
        if semantic is None or semantic.index is None or len(semantic.index) == 0:
            return Candidates.empty()
        profile = semantic.profile(ctx.user_id)
        if profile is None:
            return Candidates.empty()
        index = semantic.index
        kept = self._kept.get(ctx.user_id)
        # Deep enough that the user's seen items and a few unavailable ones can be masked out.
        depth = min(len(index), 2 * k + (len(ctx.user.seen) if ctx.user is not None else 0))
        if kept is None or kept[1] != index.generation or len(kept[2]) < depth \
                or not np.array_equal(kept[0], profile):
            keys, scores = index.search(profile, depth, None)
            found = keys[0] >= 0
            kept = (profile, index.generation, keys[0][found], scores[0][found])
            self._kept[ctx.user_id] = kept
            if len(self._kept) > SEARCHES_KEPT:
                self._kept.popitem(last=False)
        else:
            self._kept.move_to_end(ctx.user_id)
        keys, scores = kept[2], kept[3]
        allowed = ctx.allowed[keys] if len(keys) else np.zeros(0, dtype=bool)
        if allowed.sum() >= k or len(keys) == len(index):
            return Candidates(keys[allowed][:k].astype(np.int64), scores[allowed][:k].astype(np.float64))
        keys, scores = index.search(profile, k, ctx.allowed)  # a narrow mask: search within it
        found = keys[0] >= 0
        return Candidates(keys[0][found].astype(np.int64), scores[0][found].astype(np.float64))

    def forget(self, user_id: str) -> None:
        self._kept.pop(user_id, None)

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
            # The user's liked steps, newest first, and their vectors: once per request.
            liked = ctx.extra.get(EXPLAIN_KEY)
            if liked is None:
                steps = [step for step in reversed(ctx.user.recent[-4 * EXPLAIN_FROM_LAST:]) if step.weight > 0]
                vectors = semantic.index.vectors_of([step.item for step in steps]) if steps else None
                liked = ctx.extra[EXPLAIN_KEY] = (steps, vectors)
            steps, vectors = liked
            if steps:
                scores = vectors @ target
                usable = vectors.any(1) & np.fromiter((step.item != item for step in steps), dtype=bool,
                                                      count=len(steps))
                if usable.any():
                    at = int(np.argmax(np.where(usable, scores, -np.inf)))  # the newest of the closest
                    best, best_score = steps[at], float(scores[at])
        stated = semantic.stated.get(ctx.user_id)
        if stated is not None and float(stated @ target) > best_score:
            text = semantic.stated_text.get(ctx.user_id, "")
            return f"matches your interests: “{text[:60]}{'…' if len(text) > 60 else ''}”"
        if best is None:
            return None
        return f"similar to '{self.state.catalog.titles[best.item] or self.state.catalog.ids[best.item]}', " \
               f"which you {action_phrase(best.type, best.value)}"
