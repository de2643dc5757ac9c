"""The behaviour model on a tiny synthetic dataset with a planted pattern: within each
user's sequence, item i is followed by item i + 1 (wrapping around)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kairos.models import EpochReport, SeqRecConfig, StepFeatures, TrainedModel, train_sequential

N_SEEN = 30  # items 1..30 occur in sequences
N_ITEMS = 31  # item 31 has a text but no interaction at all
TINY = SeqRecConfig(depth=1, width=16, heads=1, dropout=0.1, max_len=16, batch_size=16, lr=5e-3,
                    epochs=30, patience=30, seed=7, threads=1)


def planted(users: int = 80, seed: int = 0) -> dict[str, list[int]]:
    rng = np.random.default_rng(seed)
    out = {}
    for u in range(users):
        start, length = int(rng.integers(N_SEEN)), int(rng.integers(6, 13))
        out[f"u{u:03d}"] = [(start + k) % N_SEEN + 1 for k in range(length)]
    return out


def text_vectors(seed: int = 1) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(N_ITEMS, 384)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def hit_rate_at_10(scores: np.ndarray, targets: list[int]) -> float:
    hits = 0
    for row, target in zip(scores, targets, strict=True):
        hits += int((row > row[target]).sum() < 10)
    return hits / len(targets)


@pytest.fixture(scope="module")
def data() -> tuple[dict[str, list[int]], dict[str, list[int]], list[int]]:
    full = planted()
    given = {u: s[:-1] for u, s in full.items()}  # the test item never reaches training
    return full, given, [full[u][-1] for u in sorted(full)]


@pytest.fixture(scope="module")
def trained(data: tuple) -> tuple[TrainedModel, list[EpochReport]]:
    _, given, _ = data
    reports: list[EpochReport] = []
    model = train_sequential(given, N_ITEMS, text_vectors(), TINY, reports.append)
    return model, reports


def test_training_learns_the_pattern_and_beats_popularity(data: tuple, trained: tuple) -> None:
    full, given, targets = data
    model, reports = trained
    assert reports[-1].loss < 0.7 * reports[0].loss
    assert [r.epoch for r in reports] == list(range(1, len(reports) + 1))
    assert model.metrics["valid_ndcg10"] > 0.5
    scores = model.score_sequences([given[u] for u in sorted(full)])
    popularity = np.bincount(np.concatenate([s[:-1] for s in given.values()]), minlength=N_ITEMS + 1).astype(float)
    popularity[0] = -np.inf
    model_hr = hit_rate_at_10(scores, targets)
    popular_hr = hit_rate_at_10(np.tile(popularity, (len(targets), 1)), targets)
    assert model_hr >= 0.9
    assert model_hr > popular_hr + 0.3


def test_save_load_round_trips_bit_exactly(data: tuple, trained: tuple, tmp_path: Path) -> None:
    _, given, _ = data
    model, _ = trained
    sequences = [given[u] for u in sorted(given)][:20]
    path = model.save(tmp_path / "seqrec")
    assert {p.name for p in path.iterdir()} == {"model.pt", "config.json"}
    loaded = TrainedModel.load(path)
    assert loaded.version == model.version and loaded.version.startswith("seqrec-")
    assert loaded.fingerprint == model.fingerprint and loaded.config == model.config
    assert np.array_equal(loaded.score_sequences(sequences), model.score_sequences(sequences))
    model.save(path)  # replacing an artefact in place works
    assert np.array_equal(TrainedModel.load(path).score_sequence([3, 4, 5]), model.score_sequence([3, 4, 5]))


def test_an_item_never_seen_in_training_still_scores(trained: tuple) -> None:
    model, _ = trained
    assert float(model.module.id_mask[N_ITEMS]) == 0.0  # text only
    with_cold = model.score_sequence([4, 5, N_ITEMS])
    without = model.score_sequence([4, 5])
    assert with_cold.shape == (N_ITEMS + 1,) and np.isneginf(with_cold[0])
    assert np.isfinite(with_cold[1:]).all() and with_cold[N_ITEMS] != 0.0
    assert not np.array_equal(with_cold, without)


def test_items_added_after_training_are_scored_from_their_text(tmp_path: Path) -> None:
    model = train_sequential(planted(20), N_ITEMS, text_vectors(), SeqRecConfig(**{**vars(TINY), "epochs": 1}))
    new = model.add_items(text_vectors(seed=9)[:2])
    assert new.tolist() == [N_ITEMS + 1, N_ITEMS + 2]
    scores = model.score_sequence([1, 2, int(new[0])])
    assert scores.shape == (N_ITEMS + 3,) and np.isfinite(scores[1:]).all()
    loaded = TrainedModel.load(model.save(tmp_path / "grown"))
    assert np.array_equal(loaded.score_sequence([1, 2, int(new[0])]), scores)


def test_training_is_deterministic_under_the_seed() -> None:
    config = SeqRecConfig(**{**vars(TINY), "epochs": 3, "loss": "sampled_softmax", "negatives": 8})
    sequences = planted(40)
    first = train_sequential(sequences, N_ITEMS, text_vectors(), config)
    second = train_sequential(sequences, N_ITEMS, text_vectors(), config)
    probe = [sequences[u] for u in sorted(sequences)]
    assert first.fingerprint == second.fingerprint
    assert np.array_equal(first.score_sequences(probe), second.score_sequences(probe))
    third = train_sequential(sequences, N_ITEMS, text_vectors(), SeqRecConfig(**{**vars(config), "seed": 8}))
    assert not np.array_equal(first.score_sequences(probe), third.score_sequences(probe))


@pytest.mark.parametrize(("loss", "exclude_seen", "horizon"), [
    ("bce", False, 1), ("bce", False, 3), ("sampled_softmax", False, 1), ("sampled_softmax", True, 3),
    ("softmax", True, 1), ("softmax", False, 3), ("softmax", True, 3)])
def test_other_objectives_and_ids_only_train(loss: str, exclude_seen: bool, horizon: int) -> None:
    config = SeqRecConfig(**{**vars(TINY), "epochs": 3, "loss": loss, "negatives": 8, "use_text": False,
                             "exclude_seen": exclude_seen, "horizon": horizon})
    model = train_sequential(planted(30), N_ITEMS, None, config)
    history = model.metrics["history"]
    assert len(history) == 3 and history[-1]["loss"] < history[0]["loss"]
    assert np.isfinite(model.score_sequence([1, 2])[1:]).all()


def test_event_features_train_and_round_trip(tmp_path: Path) -> None:
    sequences = planted(30)
    features = {
        u: StepFeatures([("rating:5" if i % 2 else "rating:1") for i in range(len(s))],
                        [1_700_000_000.0 + 3600.0 * i * i for i in range(len(s))])
        for u, s in sequences.items()
    }
    config = SeqRecConfig(**{**vars(TINY), "epochs": 2, "use_event_features": True})
    model = train_sequential(sequences, N_ITEMS, text_vectors(), config, features=features)
    assert model.event_types == ["rating:1", "rating:5"]
    probe = StepFeatures(["rating:5", "click"], [0.0, 60.0])  # an unknown type is allowed
    scores = model.score_sequence([1, 2], probe)
    assert not np.array_equal(scores, model.score_sequence([1, 2], StepFeatures(["rating:1", "rating:1"], [0.0, 1e6])))
    loaded = TrainedModel.load(model.save(tmp_path / "events"))
    assert np.array_equal(loaded.score_sequence([1, 2], probe), scores)


def test_sequences_longer_than_max_len_are_windowed_and_truncated() -> None:
    sequences = planted(20)
    config = SeqRecConfig(**{**vars(TINY), "epochs": 1, "max_len": 4})
    model = train_sequential(sequences, N_ITEMS, text_vectors(), config)
    positions = sum(len(s) - 2 for s in sequences.values())  # all but the validation item, each predicted once
    assert model.metrics["train_positions"] == positions
    assert model.metrics["train_windows"] > len(sequences)
    long = list(range(1, 12))
    assert np.array_equal(model.score_sequence(long), model.score_sequence(long[-4:]))


def test_a_refit_trains_on_every_item_for_the_given_epochs() -> None:
    sequences = planted(20)
    model = train_sequential(sequences, N_ITEMS, text_vectors(), SeqRecConfig(**{**vars(TINY), "epochs": 2, "holdout": False}))
    assert model.metrics["epochs_run"] == 2 and model.metrics["valid_ndcg10"] is None
    assert model.metrics["train_positions"] == sum(len(s) - 1 for s in sequences.values())


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        SeqRecConfig(loss="hinge")
    with pytest.raises(ValueError):
        SeqRecConfig(use_ids=False, use_text=False)
    with pytest.raises(ValueError):
        train_sequential({"u": [1, 2, 99]}, N_ITEMS, None, SeqRecConfig(use_text=False))
    with pytest.raises(ValueError):
        train_sequential({"u": [1, 2, 3]}, N_ITEMS, None, SeqRecConfig(use_text=True))


def test_the_transition_prior_is_weighed_on_validation_and_travels_with_the_artefact(tmp_path: Path) -> None:
    full = planted()
    given = {u: s[:-1] for u, s in full.items()}
    config = SeqRecConfig(**{**vars(TINY), "epochs": 2, "transition_window": 2, "transition_lags": 3})
    model = train_sequential(given, N_ITEMS, text_vectors(), config)
    # The planted pattern is first-order: the counted prior alone ranks the next item first.
    assert model.metrics["transition_scale"] > 0 and model.metrics["valid_ndcg10"] > 0.9
    assert model.module.trans_index.shape[1] > 0
    targets = [full[u][-1] for u in sorted(full)]
    assert hit_rate_at_10(model.score_sequences([given[u] for u in sorted(full)]), targets) >= 0.9
    loaded = TrainedModel.load(model.save(tmp_path / "prior"))
    assert np.array_equal(loaded.score_sequence([3, 4, 5]), model.score_sequence([3, 4, 5]))
    new = loaded.add_items(text_vectors(seed=9)[:1])
    scores = loaded.score_sequence([4, 5, int(new[0])])
    assert scores.shape == (N_ITEMS + 2,) and np.isfinite(scores[1:]).all()
    # A refit has no validation: it takes the scale it is given.
    refit = train_sequential(given, N_ITEMS, text_vectors(), SeqRecConfig(**{**vars(config), "holdout": False,
                                                                              "transition_scale": 2.0}))
    assert refit.metrics["transition_scale"] == 2.0
    with pytest.raises(ValueError):
        SeqRecConfig(transition_window=2, holdout=False)


def test_transition_counts_pair_items_within_the_window() -> None:
    from kairos.models.sequential.network import _row_normalised, _transition_counts

    counts = _transition_counts([np.array([1, 2, 3])], 3, window=2, backward=0.5).to_dense()
    expected = np.zeros((4, 4))
    for a, b in [(1, 2), (2, 3), (1, 3)]:
        expected[a, b] += 1.0
        expected[b, a] += 0.5
    assert np.allclose(counts.numpy(), expected)
    index, value = _row_normalised(_transition_counts([np.array([1, 2, 3])], 3, window=2, backward=0.5))
    sums = np.zeros(4)
    np.add.at(sums, index[0].numpy(), value.numpy())
    assert np.allclose(sums[1:], 1.0)


def test_seen_before_marks_the_history_up_to_each_step() -> None:
    import torch

    from kairos.models.sequential.objective import _seen_before

    items = torch.tensor([[3, 1, 3, 2], [2, 4, 0, 0]])
    real = items > 0
    seen = _seen_before(items, real, 4)
    expected = []
    for b, t in zip(*real.nonzero(as_tuple=True), strict=True):
        row = np.zeros(5, dtype=bool)
        row[items[b, : t + 1].numpy()] = True
        expected.append(row)
    assert np.array_equal(seen.numpy(), np.array(expected))
    columns = torch.tensor([2, 4, 2, 0])  # e.g. sampled negatives, repeats included
    assert np.array_equal(_seen_before(items, real, 4, columns).numpy(), np.array(expected)[:, columns.numpy()])


def test_learning_rate_schedule_warms_up_then_decays() -> None:
    from kairos.models.sequential.trainer import _lr_factor

    config = SeqRecConfig(warmup_steps=10, lr_schedule="cosine")
    assert _lr_factor(config, 0, 100) == pytest.approx(0.1)
    assert _lr_factor(config, 9, 100) == pytest.approx(1.0)
    assert _lr_factor(config, 55, 100) == pytest.approx(0.5)
    assert _lr_factor(config, 100, 100) == pytest.approx(0.0)
    assert _lr_factor(SeqRecConfig(), 1000, 100) == 1.0
    with pytest.raises(ValueError):
        SeqRecConfig(lr_schedule="step")


def test_presets_are_configs_with_overrides() -> None:
    from kairos.models import SEQREC_PRESETS, preset_config

    assert {"long", "short"} <= set(SEQREC_PRESETS)
    assert preset_config("long").max_len == 200 and preset_config("short").max_len == 50
    assert preset_config("short", width=32).width == 32
    with pytest.raises(ValueError):
        preset_config("medium")


def test_served_scores_match_the_training_path_dense_and_sparse(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    """Serving computes the prior with scipy rows; training and validation with torch
    (dense, or CSR for a large catalogue): the scores agree."""
    import torch

    import kairos.models.sequential.network as network

    config = SeqRecConfig(**{**vars(TINY), "epochs": 1, "transition_window": 2, "transition_lags": 3})
    model = train_sequential(planted(20), N_ITEMS, text_vectors(), config)
    served = model.score_sequences([[1, 2, 3], [7]])
    items = torch.tensor([[1, 2, 3], [7, 0, 0]])
    with torch.inference_mode():
        dense = model.module.scores(items, model.module.item_table()).numpy()
        monkeypatch.setattr(network, "DENSE_TRANSITIONS", 0)
        assert model.module.transition_matrix().layout == torch.sparse_csr
        sparse = model.module.scores(items, model.module.item_table()).numpy()
    assert np.allclose(served, dense, atol=1e-4) and np.allclose(served, sparse, atol=1e-4)
    # Extra rows (items outside the model) leave the model's own scores as they were and
    # score what the same items added to a copy would (without the prior, whose floor
    # depends on the item count).
    vectors = text_vectors(seed=9)[:2]
    with_extra = model.score_sequence([4, 5], extra=model.text_rows(vectors))
    assert np.array_equal(with_extra[: N_ITEMS + 1], model.score_sequence([4, 5]))
    plain = train_sequential(planted(20), N_ITEMS, text_vectors(), SeqRecConfig(**{**vars(TINY), "epochs": 1}))
    grown = TrainedModel.load(plain.save(tmp_path / "copy"))
    grown.add_items(vectors)
    assert np.allclose(plain.score_sequence([4, 5], extra=plain.text_rows(vectors)), grown.score_sequence([4, 5]),
                       atol=1e-5)



def test_a_cold_item_takes_the_prior_of_its_text_neighbours() -> None:
    """Item N_ITEMS has text but no transitions: its prior is the highest among its
    text-nearest items with transitions (not the floor), the same served, for items
    added after training, and in the training path."""
    import torch

    config = SeqRecConfig(**{**vars(TINY), "epochs": 2, "transition_window": 2, "cold_neighbours": 3})
    model = train_sequential(planted(20), N_ITEMS, text_vectors(), config)
    module = model.module
    assert float(module.trans_pop[N_ITEMS]) == 0.0
    texts = text_vectors()  # row i - 1 is item i
    nearest = 1 + np.argsort(-(texts[:N_SEEN] @ texts[N_ITEMS - 1]))[:3]
    cold, neighbours = module.cold_items()
    assert cold.tolist() == [N_ITEMS] and sorted(neighbours[0].tolist()) == sorted(nearest.tolist())
    new = text_vectors(seed=9)[:2]
    extra, extra_neighbours = model.text_rows(new), model.warm_neighbours(new)
    prior = model._log_prior([np.array([1, 2, 3])], N_ITEMS + 3, extra_neighbours)[0]
    assert prior[N_ITEMS] == prior[nearest].max()
    assert prior[N_ITEMS + 1] == prior[extra_neighbours[0]].max()
    served = model.score_sequence([1, 2, 3], extra=extra, extra_neighbours=extra_neighbours)
    with torch.inference_mode():
        trained = module.scores(torch.tensor([[1, 2, 3]]), module.item_table(), extra=extra,
                                extra_neighbours=torch.from_numpy(extra_neighbours)).numpy()[0]
    assert np.allclose(served, trained, atol=1e-4)
    floor = train_sequential(planted(20), N_ITEMS, text_vectors(), SeqRecConfig(**{**vars(config), "cold_prior": "floor"}))
    floor_prior = floor._log_prior([np.array([1, 2, 3])], N_ITEMS + 1)[0]
    assert floor_prior[N_ITEMS] < floor_prior[1:N_ITEMS].min()  # buried whatever its text
    with pytest.raises(ValueError, match="cold_prior"):
        SeqRecConfig(cold_prior="mean")


def test_one_item_scored_for_many_users_matches_full_scoring() -> None:
    """Push targeting scores one item for every user from cached queries, normalisers and
    prior columns: the same log-probabilities as scoring each user's whole catalogue, for
    items with transitions, a cold item (N_ITEMS) and an extra item outside the model."""
    config = SeqRecConfig(**{**vars(TINY), "epochs": 2, "transition_window": 2, "transition_lags": 3,
                             "cold_neighbours": 3})
    model = train_sequential(planted(20), N_ITEMS, text_vectors(), config)
    new = text_vectors(seed=9)[:2]
    extra, extra_neighbours = model.text_rows(new), model.warm_neighbours(new)
    sequences = [[1, 2, 3], [7], [9, 10, 11, 12, 13]]
    full = model.score_sequences(sequences, extra=extra, extra_neighbours=extra_neighbours)
    expected = full - np.log(np.exp(full[:, 1:]).sum(1, keepdims=True))
    queries, lse, recent = model.user_queries(sequences, extra=extra, extra_neighbours=extra_neighbours)
    assert recent[0].tolist() == [3, 2, 1] and recent[1].tolist() == [7, 0, 0]
    keys = model.item_keys(extra)
    columns = np.array([2, 14, N_ITEMS, N_ITEMS + 1, N_ITEMS + 2])
    got = queries @ keys[columns].T + model.prior_columns(recent, columns, extra_neighbours) - lse[:, None]
    assert np.allclose(got, expected[:, columns], atol=1e-4)


@pytest.mark.parametrize("depth", [1, 2])
def test_the_last_step_alone_matches_encoding_every_step(depth: int) -> None:
    """`last` computes only the final step in the last block (what a query needs): the
    same hidden state as `encode` read at that step, padded rows and empty ones included."""
    import torch

    from kairos.models.sequential.network import SequentialRecommender

    torch.manual_seed(depth)
    config = SeqRecConfig(**{**vars(TINY), "depth": depth, "heads": 2, "width": 16})
    module = SequentialRecommender(config, n_items=30, text_dim=8).eval()
    items = torch.randint(1, 31, (5, 12))
    for row, length in enumerate([12, 7, 1, 0, 3]):  # right-padded; row 3 is empty
        items[row, length:] = 0
    with torch.inference_mode():
        table = module.item_table()
        hidden = module.encode(items, table)
        last = ((items != 0).sum(1) - 1).clamp(min=0)
        expected = hidden[torch.arange(5), last]
        assert torch.allclose(module.last(items, table), expected, atol=1e-5)
        assert torch.allclose(module.last(items[:1], table), expected[:1], atol=1e-5)  # no padding: no mask
