"""From candidates to a ranked list: fusion of sources (later: a learned ranker, rules)."""

from kairos.ranking.fusion import Fused, reciprocal_rank_fusion

__all__ = ["Fused", "reciprocal_rank_fusion"]
