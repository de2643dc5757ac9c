"""From candidates to a ranked list: fusion of sources (later: a learned ranker, rules)."""

from kairos.ranking.fusion import FusedItem, reciprocal_rank_fusion

__all__ = ["FusedItem", "reciprocal_rank_fusion"]
