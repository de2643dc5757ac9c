"""The factor models' candidates from an inner-product index (index/inner_product.py,
sources/factor_index.py): the same items as scoring every item, masks honoured."""

from __future__ import annotations

import time

import numpy as np

from kairos.index import InnerProductIndex
from kairos.sources.factor_index import FactorIndex


def clustered(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Vectors like fitted factors: around a few topics, of unequal lengths."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((20, dim))
    rows = topics[rng.integers(0, 20, n)] + 0.4 * rng.standard_normal((n, dim))
    return (rows * rng.uniform(0.2, 2.0, (n, 1))).astype(np.float32)


def exact_top(vectors: np.ndarray, keys: np.ndarray, query: np.ndarray, k: int,
              allowed: np.ndarray) -> list[int]:
    scores = vectors @ query
    ok = allowed[keys]
    order = np.lexsort((keys[ok], -scores[ok]))[:k]
    return keys[ok][order].tolist()


def test_the_index_finds_the_largest_inner_products_under_a_mask() -> None:
    vectors = clustered(6_000)
    keys = np.arange(6_000, dtype=np.int64) * 3  # keys need not be dense
    rng = np.random.default_rng(1)
    allowed = rng.random(int(keys.max()) + 1) > 0.3
    exact, ivf = InnerProductIndex(vectors, keys, exact_max=10_000), InnerProductIndex(vectors, keys, exact_max=0)
    assert (exact.mode, ivf.mode) == ("exact", "ivf")
    recall = []
    for _ in range(30):
        query = (vectors[rng.integers(0, 6_000)] + 0.2 * rng.standard_normal(16)).astype(np.float32)
        truth = exact_top(vectors, keys, query, 20, allowed)
        found, scores = exact.search(query, 20, allowed)
        assert found.tolist() == truth
        assert np.allclose(scores, vectors[found // 3] @ query, rtol=1e-5)
        found, scores = ivf.search(query, 20, allowed)
        assert allowed[found].all() and list(scores) == sorted(scores, reverse=True)
        recall.append(len(set(found.tolist()) & set(truth)) / 20)
    assert np.mean(recall) >= 0.95, np.mean(recall)


def test_a_factor_index_is_built_once_per_model_in_the_background() -> None:
    index = FactorIndex(min_items=100)
    vectors = clustered(500)
    model, other = object(), object()
    calls: list[object] = []

    def rows() -> tuple[np.ndarray, np.ndarray]:
        calls.append(model)
        return vectors, np.arange(500, dtype=np.int64)

    assert index.get(model, 50, rows) is None and not calls  # below min_items: never built
    assert index.get(model, 500, rows) is None  # building
    deadline = time.monotonic() + 10
    while (built := index.get(model, 500, rows)) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert built is not None and len(built) == 500 and len(calls) == 1
    assert index.get(other, 500, rows) is None  # a new model: built again
    assert FactorIndex(min_items=0).get(model, 10**6, rows) is None  # 0: never


def test_als_candidates_from_the_index_are_those_of_scoring_every_item() -> None:
    from kairos.config import Settings
    from kairos.models.als import AlsConfig, AlsModel
    from kairos.sources.als import AlsSource
    from kairos.sources.base import UserContext
    from kairos.state import Catalog, OnlineState
    from kairos.store import EventRecord, ItemRecord

    n = 3_000
    catalog = Catalog()
    for k in range(n):
        catalog.upsert(ItemRecord(f"i{k}"))
    state = OnlineState(Settings(), catalog)
    state.als = AlsModel(clustered(n, dim=8), AlsConfig(factors=8))
    rng = np.random.default_rng(2)
    state.apply([EventRecord(f"u{u}", f"i{int(rng.integers(0, n))}", "click", float(t), None)
                 for t in range(400) for u in [t % 20]])
    scanned, indexed = AlsSource(state), AlsSource(state, index_min_items=1_000)
    deadline = time.monotonic() + 10
    indexed.candidates(UserContext("u0", 0.0, state.users["u0"], catalog.available.copy()), 10)  # builds
    while indexed.index.get(state.als, n, lambda: (np.zeros((0, 8)), np.zeros(0))) is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    agree = []
    scan = state.als.scores
    for u in range(20):
        allowed = catalog.available.copy()
        allowed[rng.integers(0, n, 300)] = False
        ctx = UserContext(f"u{u}", 0.0, state.users[f"u{u}"], allowed)
        expected = scanned.candidates(ctx, 30)
        state.als.scores = None  # type: ignore[assignment,method-assign]  # the index alone answers
        found = indexed.candidates(ctx, 30)
        state.als.scores = scan  # type: ignore[method-assign]
        assert allowed[found.items].all() and (found.scores > 0).all()
        agree.append(len(set(found.items.tolist()) & set(expected.items.tolist())) / max(len(expected.items), 1))
    assert np.mean(agree) >= 0.95, np.mean(agree)
