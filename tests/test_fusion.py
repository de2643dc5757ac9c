"""Reciprocal-rank fusion over the proposed items only."""

from __future__ import annotations

import numpy as np

from kairos.ranking import reciprocal_rank_fusion
from kairos.sources import Candidates


def test_fusion_sums_weighted_reciprocal_ranks_of_the_proposed_items() -> None:
    ranked = {"a": Candidates(np.array([900_000, 5, 7]), np.array([3.0, 2.0, 1.0])),
              "b": Candidates(np.array([7, 42]), np.array([0.9, 0.1])),
              "off": Candidates(np.array([1]), np.array([1.0])),  # weight 0: not fused
              "none": Candidates.empty()}
    fused = reciprocal_rank_fusion(ranked, {"a": 1.0, "b": 2.0, "off": 0.0, "none": 1.0}, k=10.0)
    assert fused.items.tolist() == [5, 7, 42, 900_000]
    expected = {900_000: 1 / 11, 5: 1 / 12, 7: 1 / 13 + 2 / 11, 42: 2 / 12}
    for item, score in expected.items():
        assert np.isclose(fused.score(item), score)
    assert fused.score(1) == 0.0 and fused.sources_of(1) == []
    assert fused.sources_of(7) == ["b", "a"]  # by decreasing contribution
    assert [item for item, _, _ in fused.top(3)] == [7, 42, 900_000]
    assert np.allclose(fused.scores_of(np.array([42, 5])), [2 / 12, 1 / 12])
    assert [item for item, _, _ in fused.rescored(np.array([4.0, 3.0, 2.0, 1.0])).top(2)] == [5, 7]


def test_nothing_proposed_fuses_to_nothing() -> None:
    fused = reciprocal_rank_fusion({"a": Candidates.empty()}, {"a": 1.0})
    assert fused.top(10) == [] and fused.score(3) == 0.0 and len(fused.pool()) == 0
