"""VectorIndex: exact and HNSW modes agree with brute force and honour masks and mutations."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import kairos.index.vectors as vectors_module
from kairos.index import VectorIndex

DIM = 32


def unit(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(keys: np.ndarray, vecs: np.ndarray, queries: np.ndarray, k: int,
          allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    if allowed is not None:
        ok = np.array([key < len(allowed) and allowed[key] for key in keys], dtype=bool)
        keys, vecs = keys[ok], vecs[ok]
    scores = queries @ vecs.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return keys[order], np.take_along_axis(scores, order, axis=1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    keys = np.sort(np.random.default_rng(0).choice(10_000, 3_000, replace=False))
    return keys, unit(len(keys), 1), unit(25, 2)


def test_exact_search_equals_brute_force(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    keys, vecs, queries = data
    index = VectorIndex(DIM)
    index.upsert(keys, vecs)
    assert index.mode == "exact" and len(index) == len(keys)
    found, scores = index.search(queries, 10)
    want, want_scores = brute(keys, vecs, queries, 10)
    np.testing.assert_array_equal(found, want)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)
    single, _ = index.search(queries[0], 10)
    assert single.shape == (1, 10)
    np.testing.assert_array_equal(single[0], want[0])


def test_padding_and_empty() -> None:
    index = VectorIndex(DIM)
    keys, scores = index.search(unit(1, 0)[0], 5)
    assert (keys == -1).all() and np.isneginf(scores).all()
    index.upsert([3, 7], unit(2, 1))
    keys, scores = index.search(unit(2, 2), 5)
    assert keys.shape == (2, 5)
    assert set(keys[0, :2]) == {3, 7} and (keys[:, 2:] == -1).all() and np.isneginf(scores[:, 2:]).all()


def test_upsert_replaces_and_normalises() -> None:
    index = VectorIndex(DIM)
    vecs = unit(100, 3)
    index.upsert(np.arange(100), vecs)
    target = unit(1, 4)[0]
    index.upsert([42], 3.0 * target)  # scaled: stored normalised
    np.testing.assert_allclose(index.vector(42), target, rtol=1e-5, atol=1e-6)
    keys, scores = index.search(target, 1)
    assert keys[0, 0] == 42 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    keys, scores = index.search(vecs[42], 100)
    assert scores[0, list(keys[0]).index(42)] < 0.99  # the old vector is gone
    assert len(index) == 100


def test_repeated_key_in_one_batch_keeps_the_last() -> None:
    index = VectorIndex(DIM)
    vecs = unit(3, 5)
    index.upsert([9, 9, 9], vecs)
    assert len(index) == 1
    np.testing.assert_allclose(index.vector(9), vecs[2], rtol=1e-5, atol=1e-6)


def test_remove_excludes_at_once(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    keys, vecs, _ = data
    index = VectorIndex(DIM)
    index.upsert(keys, vecs)
    gone = keys[:50]
    assert index.remove(np.concatenate([gone, [-1, 10**9]])) == 50
    assert index.remove(gone) == 0
    assert len(index) == len(keys) - 50
    assert gone[0] not in index and keys[60] in index and index.vector(int(gone[0])) is None
    found, _ = index.search(vecs[:50], 5)
    assert not np.isin(found, gone).any()
    rows = index.vectors_of([keys[60], gone[0]])
    np.testing.assert_allclose(rows[0], vecs[60], rtol=1e-5, atol=1e-6)
    assert not rows[1].any()
    np.testing.assert_array_equal(index.keys(), keys[50:])


def test_masks_including_one_percent(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    keys, vecs, queries = data
    index = VectorIndex(DIM)
    index.upsert(keys, vecs)
    rng = np.random.default_rng(6)
    for share in (0.5, 0.01):
        allowed = np.zeros(10_000, dtype=bool)
        allowed[rng.choice(keys, int(share * len(keys)), replace=False)] = True
        found, scores = index.search(queries, 10, allowed)
        want, _ = brute(keys, vecs, queries, 10, allowed)
        np.testing.assert_array_equal(found, want)
        assert (found >= 0).all()
    short = np.ones(int(keys[100]), dtype=bool)  # keys past the mask's end are not allowed
    found, _ = index.search(queries, 10, short)
    assert (found >= 0).all() and (found < len(short)).all()
    few = np.zeros(10_000, dtype=bool)
    few[keys[:3]] = True
    found, scores = index.search(queries, 10, few)
    assert (np.sort(found[:, :3], axis=1) == keys[:3]).all() and (found[:, 3:] == -1).all()
    found, _ = index.search(queries, 10, np.zeros(0, dtype=bool))
    assert (found == -1).all()


@pytest.mark.parametrize("exact_max", [50_000, 1_000])
def test_save_load_round_trip(tmp_path: Path, exact_max: int,
                              data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    keys, vecs, queries = data
    index = VectorIndex(DIM, exact_max=exact_max, hnsw_m=16, ef_construction=40, ef_search=64)
    index.upsert(keys, vecs)
    index.remove(keys[:10])
    index.upsert(keys[10:20], unit(10, 7))  # tombstones in HNSW mode
    allowed = np.random.default_rng(8).random(10_000) < 0.9
    path = tmp_path / "idx"
    index.save(path)
    index.save(path)  # overwriting an existing save
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
    loaded = VectorIndex.load(path)
    assert (loaded.mode, len(loaded), loaded.tombstones) == (index.mode, len(index), index.tombstones)
    assert (loaded.hnsw_m, loaded.ef_construction, loaded.ef_search) == (16, 40, 64)
    for mask in (None, allowed):
        a_keys, a_scores = index.search(queries, 10, mask)
        b_keys, b_scores = loaded.search(queries, 10, mask)
        np.testing.assert_array_equal(a_keys, b_keys)
        np.testing.assert_array_equal(a_scores, b_scores)
    np.testing.assert_array_equal(loaded.vectors_of(keys), index.vectors_of(keys))


def hnsw_index(keys: np.ndarray, vecs: np.ndarray) -> VectorIndex:
    index = VectorIndex(DIM, exact_max=1_000, hnsw_m=16, ef_construction=80, ef_search=64)
    index.upsert(keys[:900], vecs[:900])
    assert index.mode == "exact"
    index.upsert(keys[900:], vecs[900:])
    assert index.mode == "hnsw"
    return index


def test_hnsw_recall_and_mutations(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    keys, vecs, queries = data
    keys, vecs = keys[:2_000], vecs[:2_000]
    index = hnsw_index(keys, vecs)
    queries = unit(200, 9)
    found, scores = index.search(queries, 10)
    want, _ = brute(keys, vecs, queries, 10)
    assert recall(found, want) >= 0.95
    assert (np.diff(scores, axis=1) <= 1e-6).all()

    gone = keys[:100]
    index.remove(gone)
    found, _ = index.search(vecs[:100], 10)
    assert not np.isin(found, gone).any() and (found >= 0).all()
    assert index.tombstones == 100 and len(index) == 1_900

    moved = unit(5, 10)
    index.upsert(keys[200:205], moved)
    found, scores = index.search(moved, 1)
    np.testing.assert_array_equal(found[:, 0], keys[200:205])
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    index.upsert(keys[200:205], moved)  # unchanged vectors leave no tombstones
    assert index.tombstones == 105
    live_keys = np.setdiff1d(keys, gone)
    live_vecs = index.vectors_of(live_keys)
    want, _ = brute(live_keys, live_vecs, queries, 10)
    assert recall(index.search(queries, 10)[0], want) >= 0.95


@pytest.mark.parametrize("subset_cost_ratio", [16.0, 0.0])
def test_hnsw_masks(monkeypatch: pytest.MonkeyPatch, subset_cost_ratio: float,
                    data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    # subset_cost_ratio=0 forces the faiss ID-selector path even for a 1% mask.
    monkeypatch.setattr(vectors_module, "SUBSET_COST_RATIO", subset_cost_ratio)
    keys, vecs, _ = data
    keys, vecs = keys[:2_000], vecs[:2_000]
    index = hnsw_index(keys, vecs)
    index.remove(keys[:50])
    queries = unit(100, 11)
    rng = np.random.default_rng(12)
    for share in (0.95, 0.3, 0.01):
        allowed = np.zeros(10_000, dtype=bool)
        allowed[rng.choice(keys, int(share * len(keys)), replace=False)] = True
        found, _ = index.search(queries, 10, allowed)
        assert (found >= 0).all(), share  # not starved: every mask allows >= 10 live keys
        assert allowed[found].all() and not np.isin(found, keys[:50]).any()
        live = keys[50:]
        want, _ = brute(live, vecs[50:], queries, 10, allowed)
        assert recall(found, want) >= 0.95, share


def test_starved_hnsw_search_falls_back_to_exact(monkeypatch: pytest.MonkeyPatch,
                                                 data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    # A tiny beam and no subset shortcut: HNSW finds too few allowed keys, exact fills in.
    monkeypatch.setattr(vectors_module, "SUBSET_COST_RATIO", 0.0)
    monkeypatch.setattr(vectors_module, "EF_SEARCH_CAP", 1)
    keys, vecs, _ = data
    keys, vecs = keys[:2_000], vecs[:2_000]
    index = hnsw_index(keys, vecs)
    index.ef_search = 10
    allowed = np.zeros(10_000, dtype=bool)
    allowed[keys[::100]] = True
    queries = unit(50, 16)
    found, scores = index.search(queries, 10, allowed)
    want, want_scores = brute(keys, vecs, queries, 10, allowed)
    np.testing.assert_array_equal(found, want)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)


def test_tombstones_trigger_rebuild_and_fall_back_to_exact(
        data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    keys, vecs, queries = data
    keys, vecs = keys[:2_000], vecs[:2_000]
    index = hnsw_index(keys, vecs)
    index.upsert(keys[:400], unit(400, 13))  # 400 tombstones: 400 / 2400 < 25%
    assert index.mode == "hnsw" and index.tombstones == 400
    index.upsert(keys[:400], unit(400, 14))  # 800 / 2800 > 25%: rebuilt
    assert index.mode == "hnsw" and index.tombstones == 0 and len(index) == 2_000
    index.remove(keys[:1_200])  # 1200 / 2000 > 25%, 800 left <= exact_max
    assert index.mode == "exact" and len(index) == 800
    found, _ = index.search(queries, 10)
    want, _ = brute(keys[1_200:], vecs[1_200:], queries, 10)
    np.testing.assert_array_equal(found, want)


def test_validation() -> None:
    index = VectorIndex(DIM)
    with pytest.raises(ValueError):
        index.upsert([1, 2], unit(3, 0))
    with pytest.raises(ValueError):
        index.upsert([-1], unit(1, 0))
    with pytest.raises(ValueError):
        index.upsert([1], np.full((1, DIM), np.nan, dtype=np.float32))
    with pytest.raises(ValueError):
        index.search(np.zeros(DIM + 1, dtype=np.float32), 5)


def test_concurrent_upserts_and_searches() -> None:
    index = VectorIndex(DIM, exact_max=500, hnsw_m=8, ef_construction=40)
    vecs = unit(2_000, 15)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for start in range(0, 2_000, 100):
                index.upsert(np.arange(start, start + 100), vecs[start:start + 100])
                index.remove(np.arange(start, start + 10))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            for i in range(200):
                found, _ = index.search(vecs[i], 5)
                assert found.shape == (1, 5)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader), threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(index) == 1_800 and index.mode == "hnsw"
