"""`popular`: trending items, by time-decayed weighted engagement."""

from __future__ import annotations

from kairos.sources.base import Candidates, UserContext, top_k
from kairos.state.online import OnlineState


class PopularSource:
    name = "popular"

    def __init__(self, state: OnlineState) -> None:
        self.state = state

    def candidates(self, ctx: UserContext, k: int) -> Candidates:
        popularity = self.state.popularity
        n = len(self.state.catalog)
        items, values, complete = popularity.leaders()
        inside = items < n
        items, values = items[inside], values[inside]
        keep = ctx.allowed[items]
        if complete or int(keep.sum()) >= k:
            found = Candidates(items[keep][:k], values[keep][:k])
        else:  # a narrow filter: fewer than k of the leaders pass it
            found = top_k(popularity.ranking_scores(n), k, ctx.allowed)
        # Shares of all engagement: the decayed sums themselves grow without bound over
        # years of log (forward decay), far past what a float32 feature holds.
        total = popularity.total()
        return Candidates(found.items, found.scores / total) if total > 0 else found

    def explain(self, ctx: UserContext, item: int) -> str | None:
        if ctx.category:
            return f"trending in {ctx.category}"
        categories = self.state.catalog.categories[item]
        return f"trending in {categories[0]}" if categories else "trending now"
