from __future__ import annotations

import math

import numpy as np
import pytest

from kairos.evaluation.metrics import (
    coverage,
    intra_list_diversity,
    list_metrics,
    mean_metrics,
    novelty,
    rank_metrics,
    target_rank,
)


def test_a_target_ranked_first_scores_one_everywhere() -> None:
    greater, tied = target_rank(np.array([0.1, 0.9, 0.3]), target=1)
    assert (greater, tied) == (0, 0)
    metrics = rank_metrics(greater, tied)
    assert all(value == 1.0 for value in metrics.values())


def test_hand_computed_rank_three() -> None:
    scores = np.array([0.5, 0.9, 0.7, 0.2, 0.1])
    greater, tied = target_rank(scores, target=0)  # third place: rank 2
    assert (greater, tied) == (2, 0)
    m = rank_metrics(greater, tied)
    assert m["HR@1"] == 0 and m["HR@5"] == 1
    assert m["NDCG@5"] == pytest.approx(1 / math.log2(4)) == pytest.approx(0.5)
    assert m["MRR"] == pytest.approx(1 / 3)


def test_ties_count_as_the_mean_over_random_tie_breaks() -> None:
    scores = np.array([1.0, 0.5, 0.5, 0.5, 0.0])
    greater, tied = target_rank(scores, target=2)
    assert (greater, tied) == (1, 2)  # ranks 1, 2 or 3, each with probability 1/3
    m = rank_metrics(greater, tied, hr_ks=(1, 2, 5), ndcg_ks=(2,))
    assert m["HR@1"] == 0
    assert m["HR@2"] == pytest.approx(1 / 3)
    assert m["HR@5"] == 1
    assert m["NDCG@2"] == pytest.approx((1 / math.log2(3)) / 3)
    assert m["MRR"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)


def test_a_target_tied_with_a_huge_catalogue_is_near_random() -> None:
    scores = np.zeros(100_000)
    m = rank_metrics(*target_rank(scores, target=7))
    assert m["HR@10"] == pytest.approx(10 / 100_000)
    assert m["MRR"] == pytest.approx(sum(1 / r for r in range(1, 100_001)) / 100_000, rel=1e-6)


def test_masked_candidates_do_not_compete() -> None:
    scores = np.array([0.9, 0.8, 0.1, 0.5])
    history = np.array([True, True, False, False])  # the user's history items are masked out
    greater, tied = target_rank(scores, target=3, candidates=~history)
    assert (greater, tied) == (0, 0)


def test_a_target_absent_from_the_served_list_scores_zero() -> None:
    assert list_metrics([4, 5, 6], target=9) == {"HR@10": 0.0, "NDCG@10": 0.0}
    assert list_metrics([4, 5, 6], target=5) == {"HR@10": 1.0, "NDCG@10": pytest.approx(1 / math.log2(3))}
    assert list_metrics(list(range(20)), target=12, k=10)["HR@10"] == 0.0
    assert mean_metrics([{"a": 1.0}, {"a": 0.0}]) == {"a": 0.5}


def test_beyond_accuracy_metrics() -> None:
    assert coverage([[0, 1], [1, 2]], n_items=10) == pytest.approx(0.3)
    counts = np.array([99.0, 0.0])
    assert novelty([[1]], counts) > novelty([[0]], counts)
    cats = [frozenset({"a"}), frozenset({"a"}), frozenset({"b"})]
    assert intra_list_diversity([[0, 1]], cats) == 0.0
    assert intra_list_diversity([[0, 2]], cats) == 1.0
    assert intra_list_diversity([[0, 1, 2]], cats) == pytest.approx(2 / 3)
