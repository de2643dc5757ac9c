"""Nodes on one PostgreSQL share what they learn: the model registry (versions, the one
served, rollbacks) and the embedding cache, each node with its own local folder.

Two engines here are two nodes: the same KAIROS_STORE_URL, different database paths, so
different model folders and nothing on disk in common.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_ranking import chain_engine
from test_sequential_serving import TINY, items, planted_events, sequential_top

from kairos.clock import SimulatedClock
from kairos.config import Settings
from kairos.engine import Engine
from kairos.llm.adapters import AdapterRegistry
from kairos.ranking.model import RankingRegistry
from kairos.store.artefacts import PostgresArtefacts
from kairos.training.pipeline import as_registered, publish, train_from_store
from kairos.training.ranking import train_ranking_for
from kairos.training.registry import ModelRegistry


def node(folder: Path, url: str, **extra: object) -> Engine:
    settings = Settings(db_path=folder / "kairos.db", store_url=url, sqlite_synchronous="NORMAL",
                        sequential_config=TINY, shared_embedding_cache=False, **extra)  # type: ignore[arg-type]
    return Engine(settings, clock=SimulatedClock(2_000_000.0))


def test_a_model_trained_on_one_node_is_served_by_another(tmp_path: Path, postgres_url: str) -> None:
    a = node(tmp_path / "a", postgres_url)
    a.upsert_items(items())
    a.ingest_records(planted_events())
    b = node(tmp_path / "b", postgres_url)
    try:
        run = train_from_store(a.store, a.settings, a.semantic.embed if a.semantic else None, quiet=True)
        publish(run, a.model_registry())
        assert a.model_registry().root != b.model_registry().root
        assert not (b.model_registry().root / run.model.version).exists()

        assert b.load_current_model() == run.model.version  # fetched from the database
        assert (b.model_registry().root / run.model.version / "model.pt").exists()
        b.catch_up()
        assert a.load_current_model() == run.model.version
        assert sequential_top(b, "u02") == sequential_top(a, "u02")

        # A second version, published by node B, then rolled back from node A: both follow.
        other = as_registered(train_from_store(b.store, b.settings, None, overrides={"seed": 11, "epochs": 1},
                                               quiet=True))
        b.model_registry().publish(other.model, other.item_ids, other.training)
        assert a.load_current_model() == other.version
        assert [v["version"] for v in a.model_registry().versions()] == [other.version, run.model.version]
        assert a.model_registry().versions() == b.model_registry().versions()
        a.model_registry().activate(run.model.version)
        assert b.load_current_model() == run.model.version
        with pytest.raises(FileNotFoundError):
            b.model_registry().activate("seqrec-nowhere")
    finally:
        a.close()
        b.close()


def test_the_shared_registry_keeps_the_newest_versions(tmp_path: Path, postgres_url: str) -> None:
    engine = chain_engine(tmp_path, users=5)
    shared = PostgresArtefacts(postgres_url)
    registry = RankingRegistry(tmp_path / "ranking", keep=2, shared=shared)
    versions = []
    for _ in range(3):
        model = train_ranking_for(engine, install=False)
        registry.publish(model)
        versions.append(model.version)
    assert registry.current_version() == versions[-1]
    assert registry.versions() == versions[:0:-1]  # the oldest is gone from the database
    assert RankingRegistry(tmp_path / "ranking").versions() == versions[:0:-1]  # and from the folder


def test_a_ranking_model_round_trips_through_the_database(tmp_path: Path, postgres_url: str) -> None:
    engine = chain_engine(tmp_path, ranker="learned")
    ranking = train_ranking_for(engine, install=False)
    assert ranking.ranker is not None and ranking.als is not None
    RankingRegistry(tmp_path / "a", shared=PostgresArtefacts(postgres_url)).publish(ranking)
    elsewhere = RankingRegistry(tmp_path / "b", shared=PostgresArtefacts(postgres_url))
    loaded = elsewhere.load()
    assert loaded is not None and loaded.version == ranking.version
    assert (tmp_path / "b" / ranking.version / "ranker.txt").exists()
    assert loaded.describe() == ranking.describe()


def test_a_catalogue_is_encoded_once_for_every_node(tmp_path: Path, postgres_url: str) -> None:
    a = node(tmp_path / "a", postgres_url)
    try:
        a.upsert_items(items())
        assert a.semantic is not None and a.semantic.encoded == len(items())
        b = node(tmp_path / "b", postgres_url)
        try:
            b.catch_up()
            assert b.semantic is not None and b.semantic.encoded == 0  # every vector came from PostgreSQL
            for item in items()[:3]:
                mine, theirs = (node.semantic.item_vector(node.catalog.index[item.item_id]) for node in (a, b))
                assert mine is not None and theirs is not None and np.allclose(mine, theirs)
        finally:
            b.close()
    finally:
        a.close()


def test_a_sqlite_registry_stays_a_folder(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    assert registry.shared is None and registry.current_version() is None and registry.versions() == []


def test_a_language_model_adapter_reaches_the_next_leader(tmp_path: Path, postgres_url: str) -> None:
    built = tmp_path / "built"
    built.mkdir()
    (built / "adapter_config.json").write_text('{"r": 8}')
    (built / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 64)
    trained_here = AdapterRegistry(tmp_path / "a", shared=PostgresArtefacts(postgres_url))
    trained_here.publish(built, "llm-1", {"examples": 12, "created_at": 1.0})
    leader_next = AdapterRegistry(tmp_path / "b", shared=PostgresArtefacts(postgres_url))
    path = leader_next.current()
    assert path == tmp_path / "b" / "llm-1"
    assert (path / "adapter_model.safetensors").read_bytes() == bytes(range(256)) * 64
    assert [meta["version"] for meta in leader_next.versions()] == ["llm-1"]
    assert AdapterRegistry(tmp_path / "c").current() is None  # a folder alone knows nothing of it
