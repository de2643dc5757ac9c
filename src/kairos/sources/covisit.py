"""`covisit`: items visited right after the user's latest items by other users."""

from __future__ import annotations

import numpy as np

from kairos.sources.base import Candidates, UserContext, action_phrase, top_k
from kairos.state.online import OnlineState


class CovisitSource:
    name = "covisit"

    def __init__(self, state: OnlineState, recent_items: int) -> None:
        self.state = state
        self.recent_items = recent_items

    def candidates(self, ctx: UserContext, k: int) -> Candidates:
        if ctx.user is None:
            return Candidates.empty()
        seeds = ctx.user.recent_visits(self.recent_items)
        return self.from_seeds([(step.item, 1.0 / (1 + rank)) for rank, step in enumerate(seeds)],
                               ctx.allowed, k)

    def from_seeds(
        self, seeds: list[tuple[int, float]], allowed: np.ndarray, k: int
    ) -> Candidates:
        """Sum over seeds of seed weight x P(next = b | seed), decayed counts."""
        parts_items, parts_values = [], []
        for seed, seed_weight in seeds:
            # Whole rows at C speed, kept as arrays until they change.
            row_items, counts, total = self.state.covisit.row_arrays(seed)
            if total <= 0 or not len(row_items):
                continue
            parts_items.append(row_items)
            parts_values.append(counts * (seed_weight / total))
        if not parts_items:
            return Candidates.empty()
        # Summed over the neighbours found, not a catalogue-long array.
        items, where = np.unique(np.concatenate(parts_items), return_inverse=True)
        scores = np.bincount(where, weights=np.concatenate(parts_values), minlength=len(items))
        inside = items < len(allowed)
        items, scores = items[inside], scores[inside]
        found = top_k(scores, k, allowed[items])
        return Candidates(items[found.items], found.scores)

    def explain(self, ctx: UserContext, item: int) -> str | None:
        """Name the recent visit that contributed most to this item."""
        if ctx.user is None:
            return None
        best, best_share = None, 0.0
        for rank, step in enumerate(ctx.user.recent_visits(self.recent_items)):
            row, total = self.state.covisit.neighbours(step.item)
            share = row.get(item, 0.0) / total / (1 + rank) if total > 0 else 0.0
            if share > best_share:
                best, best_share = step, share
        if best is None:
            return None
        title = self.state.catalog.titles[best.item] or self.state.catalog.ids[best.item]
        return f"often chosen after '{title}', which you {action_phrase(best.type, best.value)}"
