"""List rules: what may re-order the fused list after fusion (the generative model's
re-ranking is one). A rule gets the request, the list so far and the fusion, and
returns the list it should become; it must be quick (it runs on the request path)."""

from __future__ import annotations

from typing import Protocol

from kairos.ranking.fusion import Fused
from kairos.sources.base import UserContext

Ranked = list[tuple[int, float, list[str]]]  # (catalogue index, score, sources strongest first)


class ListRule(Protocol):
    def apply(self, ctx: UserContext, chosen: Ranked, fused: Fused, n: int) -> Ranked:
        ...
