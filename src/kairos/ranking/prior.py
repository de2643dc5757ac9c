"""Fusion weights for a log too small to learn from (a new shop, a new deployment).

Until the log holds `sequential_min_events` events there is no behaviour model and
nothing to fit weights on, and weights tuned on MovieLens would let a few best sellers
outrank what the user is doing now. The prior favours the user's own signals: the
text of what they engaged with (`semantic`) leads, and global popularity counts less
with each of the user's own visits (it is a prior: their actions are the evidence).
Ranks are fused with a small k: in a catalogue of a few dozen items every source
proposes nearly everything, and k = 60 would make a source's 20th item count almost
as much as its first.
"""

from __future__ import annotations

SEMANTIC_LEAD = 1.5  # semantic's weight under the prior: above co-visitation's default 1
PRIOR_RRF_K = 5.0
PRIOR_VISITS = 1.0  # popularity keeps PRIOR_VISITS / (PRIOR_VISITS + visits) of its weight


def prior_weights(configured: dict[str, float], user_visits: int) -> dict[str, float]:
    weights = dict(configured)
    if user_visits <= 0:
        return weights  # nothing of the user's own yet: popularity and stated interests lead
    if weights.get("semantic", 0.0) > 0:
        weights["semantic"] = max(weights["semantic"], SEMANTIC_LEAD)
    if weights.get("popular", 0.0) > 0:
        weights["popular"] *= PRIOR_VISITS / (PRIOR_VISITS + user_visits)
    return weights
