"""The behaviour model in the engine: trained from the store, served on the live
sequence, swapped atomically, and measured through the evaluation harness.

The catalogue has a planted sequential pattern: every user walks item k, k+1,
k+2, ... (wrapping around), so the next item after k is k+1 and nothing else.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from kairos.clock import SimulatedClock
from kairos.config import Settings
from kairos.engine import Engine
from kairos.evaluation.data import EvalData
from kairos.evaluation.protocols import leave_one_out
from kairos.schema import Event, Item
from kairos.sources.sequential import EXPLAIN_FROM_LAST
from kairos.store import EventRecord, ItemRecord
from kairos.training.pipeline import as_registered, publish, train_from_store
from kairos.training.registry import ModelRegistry

N_ITEMS = 24
# Small enough to train in seconds, big enough to learn k -> k+1.
TINY = {"depth": 1, "width": 32, "heads": 1, "dropout": 0.1, "max_len": 16, "batch_size": 16, "lr": 5e-3,
        "epochs": 25, "patience": 25, "seed": 3, "exclude_seen": False}
WORDS = ["apple", "river", "engine", "violin", "desert", "pepper", "castle", "rocket", "garden", "tiger",
         "marble", "harbor", "lantern", "meadow", "comet", "falcon", "glacier", "orchid", "canyon", "ember",
         "saddle", "quartz", "willow", "beacon", "thistle"]


def item_id(k: int) -> str:
    return f"i{k % N_ITEMS:02d}"


def planted_events(users: int = 60, seed: int = 0) -> list[EventRecord]:
    rng = np.random.default_rng(seed)
    events = []
    for u in range(users):
        start, length = int(rng.integers(N_ITEMS)), int(rng.integers(6, 12))
        for step in range(length):
            events.append(EventRecord(f"u{u:02d}", item_id(start + step), "click", 1_000_000.0 + 1000 * u + step))
    return sorted(events, key=lambda e: e.timestamp)


def items() -> list[Item]:
    return [Item(item_id=item_id(k), title=f"The {WORDS[k]}", categories=["things"]) for k in range(N_ITEMS)]


def settings_for(path: Path, **extra: object) -> Settings:
    return Settings(db_path=path, sqlite_synchronous="NORMAL", sequential_config=TINY, **extra)


@pytest.fixture(scope="module")
def trained_engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    path = tmp_path_factory.mktemp("seq") / "kairos.db"
    engine = Engine(settings_for(path), clock=SimulatedClock(2_000_000.0))
    engine.upsert_items(items())
    engine.ingest_records(planted_events())
    run = train_from_store(engine.store, engine.settings, engine.semantic.embed if engine.semantic else None,
                           quiet=True)
    publish(run, engine.model_registry())
    assert engine.load_current_model() == run.model.version
    return engine


def sequential_top(engine: Engine, user: str, k: int = 3) -> list[str]:
    ctx = engine.user_context(user, exclude_seen=False)
    found = engine.sources["sequential"].candidates(ctx, k)
    return [engine.catalog.ids[i] for i in found.items]


def test_the_model_learns_the_pattern_and_beats_popularity(trained_engine: Engine) -> None:
    engine = trained_engine
    metrics = engine.registered.model.metrics
    history = metrics["history"]
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    assert metrics["valid_hr10"] >= 0.9
    hits = popular_hits = 0
    for user, state in engine.state.users.items():
        last = int(engine.catalog.ids[state.recent[-1].item][1:])
        hits += sequential_top(engine, user, 1) == [item_id(last + 1)]
        ctx = engine.user_context(user, exclude_seen=False)
        popular = engine.sources["popular"].candidates(ctx, 1)
        popular_hits += [engine.catalog.ids[i] for i in popular.items] == [item_id(last + 1)]
    assert hits >= 0.9 * len(engine.state.users)
    assert hits > popular_hits + 0.5 * len(engine.state.users)


def test_a_new_event_changes_the_very_next_recommendation(trained_engine: Engine) -> None:
    engine = trained_engine
    engine.ingest([Event(user_id="fresh", item_id=item_id(3), type="click", timestamp=2_000_000.0),
                   Event(user_id="fresh", item_id=item_id(4), type="click", timestamp=2_000_001.0)])
    assert sequential_top(engine, "fresh", 1) == [item_id(5)]
    engine.ingest([Event(user_id="fresh", item_id=item_id(15), type="click", timestamp=2_000_002.0)])
    assert sequential_top(engine, "fresh", 1) == [item_id(16)]
    served = engine.recommend("fresh", 5)
    assert "sequential" in served.sources and served.model_version.endswith(engine.sequential_version)
    proposed = {i.item_id: i for i in served.items}[item_id(16)]
    assert "sequential" in proposed.sources and proposed.reason


def test_a_list_is_explained_by_the_closest_recent_visit_in_one_product(trained_engine: Engine) -> None:
    engine = trained_engine
    source = engine.sources["sequential"]
    served = engine.state.sequential
    table = served.item_vectors()
    user = engine.state.users["u07"]
    visits = list(reversed([s for s in user.recent if s.visit][-EXPLAIN_FROM_LAST:]))
    wanted = [engine.catalog.index[item_id(k)] for k in range(N_ITEMS)]
    reasons = source.explain_many(engine.user_context("u07", exclude_seen=False), wanted)
    for item, reason in zip(wanted, reasons, strict=True):
        # Worked out one pair at a time: the newest of the visits closest to the item, never the item itself.
        others = [s for s in visits if s.item != item]
        assert (reason is None) == (not others)
        if others:
            closeness = [float(table[served.model_index(s.item)] @ table[served.model_index(item)]) for s in others]
            best = others[int(np.argmax(closeness))]
            assert f"after '{engine.catalog.titles[best.item]}'" in reason
    only = visits[0].item
    engine.ingest([Event(user_id="one-visit", item_id=engine.catalog.ids[only], type="click", timestamp=2_000_000.0)])
    assert source.explain_many(engine.user_context("one-visit", exclude_seen=False), [only]) == [None]


def test_a_user_with_no_history_falls_back_cleanly(trained_engine: Engine) -> None:
    engine = trained_engine
    assert sequential_top(engine, "nobody") == []
    served = engine.recommend("nobody", 5)
    assert len(served.items) == 5 and all("sequential" not in i.sources for i in served.items)


def test_an_item_added_after_training_is_represented_from_its_text(trained_engine: Engine) -> None:
    engine = trained_engine
    served = engine.state.sequential
    assert served is not None
    n_model_items = served.model.n_items
    engine.upsert_items([Item(item_id="late", title="The apple orchard", categories=["things"])])
    index = engine.catalog.index["late"]
    assert served.model_index(index) == n_model_items + 1
    scores = served.catalogue_scores(engine.state.users["u00"].recent)
    assert scores is not None and np.isfinite(scores[index])
    assert engine.registered.model.n_items == len(engine.registered.item_ids)  # the artefact is untouched


def test_kept_scores_are_the_scores_until_the_user_or_the_catalogue_changes(trained_engine: Engine) -> None:
    engine = trained_engine
    served = engine.state.sequential
    assert served is not None
    engine.ingest([Event(user_id="kept", item_id=item_id(3), type="click", timestamp=3_000_000.0)])

    def scores() -> np.ndarray:
        user = engine.state.users["kept"]
        found = served.catalogue_scores(user.recent, ("kept", user.revision))
        assert found is not None
        assert np.array_equal(found, served.catalogue_scores(user.recent))  # what scoring afresh gives
        return found

    first = scores()
    assert scores() is first  # no event: kept
    engine.ingest([Event(user_id="kept", item_id=item_id(15), type="click", timestamp=3_000_001.0)])
    after_event = scores()
    assert after_event is not first and not np.array_equal(after_event, first)
    engine.upsert_items([Item(item_id="later", title="The pear orchard", categories=["things"])])
    grown = scores()
    assert len(grown) == len(after_event) + 1 and np.isfinite(grown[engine.catalog.index["later"]])


def test_the_registry_round_trips_and_points_at_the_published_version(trained_engine: Engine,
                                                                      tmp_path: Path) -> None:
    registered = trained_engine.registered
    target = ModelRegistry(tmp_path / "models", keep=2)
    assert target.current_version() is None and target.load() is None
    target.publish(registered.model, registered.item_ids, registered.training)
    loaded = target.load()
    assert loaded is not None and loaded.version == registered.version
    assert loaded.item_ids == registered.item_ids
    sequences = [[1, 2, 3], [5, 6]]
    assert np.array_equal(loaded.model.score_sequences(sequences), registered.model.score_sequences(sequences))
    assert [v["version"] for v in target.versions()] == [registered.version]


def test_hot_swap_under_concurrent_requests_loses_none(trained_engine: Engine) -> None:
    engine = trained_engine
    first = engine.registered
    assert first is not None
    other = train_from_store(engine.store, engine.settings, engine.semantic.embed if engine.semantic else None,
                             overrides={"seed": 11, "epochs": 2}, quiet=True)
    second = as_registered(other)
    assert second.version != first.version
    seen: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def hammer() -> None:
        try:
            while not stop.is_set():
                served = engine.recommend("u01", 5)
                assert len(served.items) == 5
                seen.append(served.model_version)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    for swap in range(6):
        engine.install_model(second if swap % 2 == 0 else first)
        answered = len(seen)
        while len(seen) < answered + 5 and not errors:  # requests are served between swaps
            time.sleep(0.001)
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors
    assert {f"online-1+{first.version}", f"online-1+{second.version}"} <= set(seen)
    engine.install_model(first)


def test_a_restart_serves_the_current_version(trained_engine: Engine) -> None:
    engine = trained_engine
    again = Engine(engine.settings.model_copy(), clock=SimulatedClock(2_000_000.0))
    try:
        assert again.sequential_version == engine.model_registry().current_version()
        assert sequential_top(again, "u02") == sequential_top(engine, "u02")
    finally:
        again.close()


def test_leave_one_out_measures_the_sequential_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAIROS_SEQUENTIAL_CONFIG", '{"depth": 1, "width": 32, "heads": 1, "max_len": 16, '
                                                   '"batch_size": 16, "lr": 0.005, "epochs": 25, "patience": 25}')
    data = EvalData("planted", [ItemRecord(i.item_id, title=i.title, categories=i.categories) for i in items()],
                    planted_events(80, seed=1))
    result = leave_one_out(data, ["popular", "sequential"], mask_history=False, quiet=True)
    assert result.sequential["version"].startswith("seqrec-")
    sequential = result.models["sequential"].metrics["HR@10"]
    assert sequential >= 0.8 and sequential > result.models["popular"].metrics["HR@10"] + 0.3


def test_the_cold_start_place_moves_up_the_best_new_item_the_model_proposes(trained_engine: Engine) -> None:
    from kairos.ranking import reciprocal_rank_fusion
    from kairos.sources import Candidates

    engine = trained_engine
    engine.upsert_items([Item(item_id="new-a", title="The river boat"), Item(item_id="new-b", title="The tiger lily")])
    a, b = engine.catalog.index["new-a"], engine.catalog.index["new-b"]
    warm = [engine.catalog.index[item_id(k)] for k in range(12)]
    proposed = np.array(warm[:8] + [b] + warm[8:] + [a])
    fused = reciprocal_rank_fusion({"sequential": Candidates(proposed, np.linspace(1, 0.1, len(proposed)))},
                                   {"sequential": 1.0})
    served = [item for item, _, _ in engine.recommender.cold_start_slots(fused.top(12), fused, 12)]
    # b (9th by the model, nobody engaged with it) takes place 5; the rest keep their order.
    assert served == warm[:4] + [b] + warm[4:8] + warm[8:11]
    # A ten that already shows a new item by that place is left alone.
    early = np.array(warm[:2] + [a] + warm[2:])
    fused = reciprocal_rank_fusion({"sequential": Candidates(early, np.linspace(1, 0.1, len(early)))},
                                   {"sequential": 1.0})
    assert [item for item, _, _ in engine.recommender.cold_start_slots(fused.top(10), fused, 10)] == early[:10].tolist()


def test_a_one_item_list_with_the_cold_start_place_first(trained_engine: Engine,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from kairos.ranking import reciprocal_rank_fusion
    from kairos.sources import Candidates

    engine = trained_engine
    engine.upsert_items([Item(item_id="new-c", title="The quartz clock")])
    new = engine.catalog.index["new-c"]
    warm = engine.catalog.index[item_id(0)]
    fused = reciprocal_rank_fusion({"sequential": Candidates(np.array([warm, new]), np.array([0.9, 0.1]))},
                                   {"sequential": 1.0})
    monkeypatch.setattr(engine.settings, "cold_start_position", 1)
    assert [item for item, _, _ in engine.recommender.cold_start_slots(fused.top(1), fused, 1)] == [new]


def test_a_large_catalogue_takes_the_same_candidates_from_the_index(trained_engine: Engine,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Past `factor_index_min_items` the behaviour model's candidates come from an
    inner-product index: the same items and (up to the estimated denominator) the same
    probabilities as scoring every item."""
    from kairos.sources.sequential import SequentialSource

    engine = trained_engine
    served = engine.state.sequential
    assert served is not None and served.model.config.transition_window
    everything, indexed = SequentialSource(engine.state), SequentialSource(engine.state, index_min_items=1)
    assert indexed.index.get(served, served.model.n_items, served.index_rows) is None  # building
    deadline = time.monotonic() + 30
    while indexed.index.get(served, served.model.n_items, served.index_rows) is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    keys = served.item_keys()
    for user in sorted(engine.state.users)[:20]:
        ctx = engine.user_context(user, exclude_seen=False)
        query, recent = served.query_of(ctx.user.recent)
        # The prior of a few columns is the full row's, cold items included.
        full_row = served.model.scores_for(np.zeros_like(query), recent, keys, served._extra_neighbours)
        columns = np.arange(1, len(keys))
        assert np.allclose(served.model.prior_of(recent, columns, served._extra_neighbours)[0], full_row[1:],
                           atol=1e-4)
        expected = everything.candidates(ctx, 5)
        with monkeypatch.context() as patch:
            patch.setattr(served, "catalogue_scores", None)  # the index path alone answers
            found = indexed.candidates(ctx, 5)
        assert found.items.tolist() == expected.items.tolist(), user
        assert np.allclose(found.scores, expected.scores, rtol=0.05), user
