"""What orders the served list: leak-free training examples, the regimes, the registry,
and the ALS source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kairos.clock import SimulatedClock
from kairos.config import Settings
from kairos.engine import Engine
from kairos.models.als import AlsModel
from kairos.ranking.features import FEATURES, pool_features
from kairos.ranking.model import RankingRegistry
from kairos.ranking.training import RankingInputs, labels_of, rewound_state
from kairos.schema import Item
from kairos.store import EventRecord
from kairos.training.ranking import ranking_registry, train_ranking_for

T0 = 1_700_000_000.0
ITEMS = 60


def chain_engine(tmp_path: Path, users: int = 300, **settings: object) -> Engine:
    """Users walk a chain: after item i comes item i + 1 (mod ITEMS), from a random start;
    a few best sellers are bought by everyone at the start (the popular trap)."""
    engine = Engine(Settings(db_path=tmp_path / "k.db", semantic_enabled=False, ranker_min_examples=50,
                             fusion_fit_min_examples=10, **settings),  # type: ignore[arg-type]
                    clock=SimulatedClock(T0 + 10 * 86400))
    engine.upsert_items([Item(item_id=f"i{i}", title=f"item {i}", created_at=T0) for i in range(ITEMS)])
    rng = np.random.default_rng(0)
    records = []
    for u in range(users):
        start = int(rng.integers(3, ITEMS))
        steps = ["i0", "i1", "i2"] + [f"i{(start + k) % ITEMS}" for k in range(int(rng.integers(3, 8)))]
        for k, item in enumerate(dict.fromkeys(steps)):
            records.append(EventRecord(f"u{u}", item, "click", T0 + u * 100 + k, None, None))
    engine.ingest_records(records)
    return engine


def test_the_rewound_state_has_not_seen_the_labels(tmp_path: Path) -> None:
    engine = chain_engine(tmp_path, users=40, popularity_half_life_s=0)  # counts, not decayed sums
    events = [e for batch in engine.store.iter_events() for e in batch]
    [labels] = labels_of(events, engine.settings)
    positions = labels.positions
    assert len(positions) == 40 and all(events[p].user_id == u for u, p in positions.items())
    assert labels.hidden == set(positions.values())  # each label is its user's latest event
    state, kept = rewound_state(RankingInputs(engine.settings, engine.catalog, events), labels.hidden)
    assert len(kept) == len(events) - 40
    for user, position in positions.items():
        label = engine.catalog.index[events[position].item_id]
        assert label not in state.users[user].seen and label in engine.state.users[user].seen
    # Popularity and co-visitation lost exactly what the labels added.
    label_counts = np.bincount([engine.catalog.index[events[p].item_id] for p in positions.values()],
                               minlength=ITEMS)
    before = engine.state.popularity.ranking_scores(ITEMS)
    after = state.popularity.ranking_scores(ITEMS)
    assert np.allclose(before - after, label_counts * engine.settings.event_weight("click", None))


def test_deeper_labels_hide_everything_their_user_did_from_them_on(tmp_path: Path) -> None:
    engine = chain_engine(tmp_path, users=40)
    engine.ingest_records([EventRecord("u0", "i5", "impression", T0 + 99, None, None),  # not a visit
                           EventRecord("u1", "i9", "dislike", T0 + 150, None, None)])
    events = [e for batch in engine.store.iter_events() for e in batch]
    depths = labels_of(events, engine.settings, depth=3)
    assert len(depths) == 3
    for j, labels in enumerate(depths, start=1):
        for user, position in labels.positions.items():
            visits = [(e.timestamp, i) for i, e in enumerate(events) if e.user_id == user and e.type == "click"]
            assert (events[position].timestamp, position) == sorted(visits)[-j]
            # Nothing of the user's from the label on is seen; everything before is.
            mine = [i for i, e in enumerate(events) if e.user_id == user]
            assert {i for i in mine if i in labels.hidden} == {i for i in mine if i >= position
                                                                or events[i].timestamp >= events[position].timestamp}
    assert any(i for i in depths[0].hidden if events[i].type == "impression")


def test_the_ranking_model_learns_the_chain_and_serves_it(tmp_path: Path) -> None:
    engine = chain_engine(tmp_path)
    ranking = train_ranking_for(engine, publish=True)
    assert ranking.mode in ("learned", "fitted") and ranking.report["examples"] >= 50
    held_out = ranking.report["held_out_ndcg@10_in_pool"]
    assert held_out[ranking.mode] >= held_out["configured"]
    assert engine.ranking is ranking and engine.state.als is ranking.als
    # A user who just clicked i20 and i21 gets i22 first, not the best sellers.
    engine.ingest_records([EventRecord("walker", "i20", "click", T0 + 90_000, None, None),
                           EventRecord("walker", "i21", "click", T0 + 90_001, None, None)])
    assert engine.recommend("walker", 3).items[0].item_id == "i22"
    # Published and reloaded: the same model, installed only for the behaviour model it read.
    loaded = ranking_registry(engine).load()
    assert loaded is not None and loaded.version == ranking.version and loaded.mode == ranking.mode
    engine.install_ranking(None)
    assert engine.load_current_ranking() == ranking.version
    if ranking.ranker is not None:
        ctx = engine.user_context("walker")
        fused = engine.fuse(ctx, engine.settings.source_weights, 50)
        pool = pool_features(engine.state, ctx, fused.ranked)
        assert pool.features.shape[1] == len(FEATURES)
        assert np.allclose(loaded.ranker.score(pool), ranking.ranker.score(pool))  # type: ignore[union-attr]


def test_too_few_examples_keep_the_configured_weights(tmp_path: Path) -> None:
    engine = chain_engine(tmp_path, users=3)  # 3 labels each (no behaviour model): 9 < 10
    ranking = train_ranking_for(engine)
    assert ranking.mode == "configured" and ranking.ranker is None
    assert engine.fusion_weights() == engine.settings.source_weights


def test_a_registry_keeps_the_newest_versions(tmp_path: Path) -> None:
    engine = chain_engine(tmp_path, users=5)
    registry = RankingRegistry(tmp_path / "ranking", keep=2)
    versions = []
    for _ in range(3):
        model = train_ranking_for(engine, install=False)
        registry.publish(model)
        versions.append(model.version)
    assert registry.current_version() == versions[-1] and len(registry.versions()) == 2


def test_als_folds_a_new_user_in_from_their_events(tmp_path: Path) -> None:
    # Two tastes: users like the even items or the odd ones.
    records = [EventRecord(f"u{u}", f"i{2 * k + u % 2}", "click", T0 + k, None, None)
               for u in range(40) for k in range(10)]
    index = {f"i{i}": i for i in range(20)}
    model = AlsModel.fit(records, index, 20, lambda t, v: 1.0)
    vector = model.user_vector([0, 2, 4], [1.0, 1.0, 1.0])  # a new user who liked three even items
    assert vector is not None
    scores = model.scores(vector, 21)  # one item newer than the fit: no score
    top = np.argsort(-scores[:20])[:5]
    assert all(item % 2 == 0 for item in top) and scores[20] == 0
    saved = tmp_path / "als"
    model.save(saved)
    again = AlsModel.load(saved)
    assert np.allclose(again.user_vector([0, 2, 4], [1.0] * 3), vector, atol=1e-4)


def test_a_ranker_trained_on_other_features_is_not_served(tmp_path: Path) -> None:
    engine = chain_engine(tmp_path, ranker="learned")
    ranking = train_ranking_for(engine, publish=True)
    assert ranking.ranker is not None
    registry = ranking_registry(engine)
    meta_path = registry.root / ranking.version / "ranking.json"
    meta = json.loads(meta_path.read_text())
    meta["features_version"] = 1
    meta_path.write_text(json.dumps(meta))
    assert registry.load() is None and registry.load() is None  # refused (and said once)
