"""New arrivals under the small-log prior: an item that arrived after the user's latest
event and matches what they engaged with takes a place near the top.

In a young shop most items have no behaviour at all, so "never engaged" (the
cold-start place, serving/recommend.py: Recommender.cold_start_slots) does not single out what is new; the
arrival time does. Only under the prior: with behaviour to learn from, the ranker
weighs an item's age itself.
"""

from __future__ import annotations

import numpy as np

from kairos.ranking.fusion import Fused
from kairos.ranking.rules import Ranked
from kairos.sources.base import UserContext
from kairos.state.catalog import Catalog

ARRIVAL_POSITION = 3  # place (from 1) a matching new arrival takes at the latest


def new_arrival_slot(catalog: Catalog, ctx: UserContext, chosen: Ranked, fused: Fused,
                     min_similarity: float, position: int = ARRIVAL_POSITION) -> Ranked:
    if ctx.user is None or not ctx.user.recent or len(chosen) < position:
        return chosen
    semantic = fused.ranked.get("semantic")
    if semantic is None or not len(semantic.items):
        return chosen
    since = ctx.user.recent[-1].timestamp
    created = catalog.created_at[semantic.items]
    fits = (semantic.scores >= min_similarity) & (created > since)
    if not fits.any():
        return chosen
    if any(catalog.created_at[item] > since for item, _, _ in chosen[:position]):
        return chosen  # a new arrival is up there already
    arrival = int(semantic.items[np.flatnonzero(fits)[0]])  # the closest to the user
    ranked = [entry for entry in chosen if entry[0] != arrival]
    if len(ranked) == len(chosen):
        ranked.pop()  # the list keeps its length
    sources = fused.sources_of(arrival) or ["semantic"]
    ranked.insert(position - 1, (arrival, ranked[position - 2][1] if position > 1 else chosen[0][1], sources))
    return ranked
