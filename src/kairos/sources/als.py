"""`als`: matrix factorisation on implicit feedback, the user folded in live.

The item factors are fitted in the background (`kairos.models.als`); the user's factors
are solved per request from their recent sequence, so the event acknowledged a moment
ago counts. Items newer than the fit are not proposed (semantic and the behaviour
model's text rows cover them).
"""

from __future__ import annotations

from kairos.sources.base import Candidates, UserContext, top_k
from kairos.state.online import OnlineState


class AlsSource:
    name = "als"

    def __init__(self, state: OnlineState) -> None:
        self.state = state

    def candidates(self, ctx: UserContext, k: int) -> Candidates:
        model = self.state.als
        if model is None or ctx.user is None:
            return Candidates.empty()
        steps = ctx.user.recent
        vector = model.user_vector([s.item for s in steps], [s.weight for s in steps])
        if vector is None:
            return Candidates.empty()
        return top_k(model.scores(vector, len(self.state.catalog)), k, ctx.allowed)

    def explain(self, ctx: UserContext, item: int) -> str | None:
        return "liked by people with tastes like yours"
