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
        return top_k(scores, k, ctx.allowed)

    def explain(self, ctx: UserContext, item: int) -> str | None:
        if ctx.category:
            return f"trending in {ctx.category}"
        categories = self.state.catalog.categories[item]
        return f"trending in {categories[0]}" if categories else "trending now"
