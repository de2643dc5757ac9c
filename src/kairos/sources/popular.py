"""`popular`: trending items, by time-decayed weighted engagement."""

from __future__ import annotations

from kairos.sources.base import Candidates, UserContext, top_k
from kairos.state.online import OnlineState


class PopularSource:
    name = "popular"

    def __init__(self, state: OnlineState) -> None:
        self.state = state

    def candidates(self, ctx: UserContext, k: int) -> Candidates:
        scores = self.state.popularity.ranking_scores(len(self.state.catalog))
        found = top_k(scores, k, ctx.allowed)
        # Shares of all engagement: the decayed sums themselves grow without bound over
        # years of log (forward decay), far past what a float32 feature holds.
        total = float(scores.sum())
        return Candidates(found.items, found.scores / total) if total > 0 else found

    def explain(self, ctx: UserContext, item: int) -> str | None:
        if ctx.category:
            return f"trending in {ctx.category}"
        categories = self.state.catalog.categories[item]
        return f"trending in {categories[0]}" if categories else "trending now"
