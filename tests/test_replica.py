"""Processes that follow the durable log: two engines over one database see each
other's writes, in log order, and end in the state a fresh rebuild gives."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from kairos.config import Settings
from kairos.engine import Engine
from kairos.replica.leader import LeaderLease
from kairos.schema import Item, User
from kairos.store import EventRecord, SQLiteStore

T0 = 1_700_000_000.0


def engine_at(path: Path, **settings: object) -> Engine:
    return Engine(Settings(db_path=path, semantic_enabled=False, **settings))  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgres"])
def log_on(request: pytest.FixtureRequest) -> dict[str, object]:
    """Settings that put the log on SQLite (the file) or on a real PostgreSQL."""
    return {} if request.param == "sqlite" else {"store_url": request.getfixturevalue("postgres_url")}


def clicks(user: str, items: list[str], start: float = T0) -> list[EventRecord]:
    return [EventRecord(user, item, "click", start + k, None, None) for k, item in enumerate(items)]


def fingerprint(engine: Engine) -> dict[str, object]:
    """What a recommendation reads, in a form two processes' states can be compared by."""
    n = len(engine.catalog)
    order = np.argsort(engine.catalog.ids[:n]) if n else np.array([], dtype=int)
    ids = [engine.catalog.ids[i] for i in order]
    popularity = engine.state.popularity.ranking_scores(n)[order] if n else np.array([])
    return {
        "items": ids,
        "available": [bool(engine.catalog.available[i]) for i in order],
        "users": {u: (s.event_count, sorted(engine.catalog.ids[i] for i in s.seen))
                  for u, s in engine.state.users.items()},
        "popularity": np.round(popularity, 9).tolist(),
        "events": engine.state.events_applied,
    }


def test_a_follower_sees_another_process_writes_in_log_order(tmp_path: Path, log_on: dict[str, object]) -> None:
    path = tmp_path / "k.db"
    writer, reader = engine_at(path, **log_on), engine_at(path, **log_on)
    writer.upsert_items([Item(item_id=f"i{k}", title=f"item {k}") for k in range(5)])
    writer.ingest_records(clicks("u1", ["i0", "i1", "i2"]))
    reader.ingest_records(clicks("u2", ["i1", "new-item"]))  # interleaved: both processes write
    writer.ingest_records(clicks("u1", ["i3"], T0 + 10))
    writer.upsert_users([User(user_id="u3", attributes={"tier": "gold"})])
    writer.delete_item("i4")

    # Read-your-writes from anywhere: a read catches up before it answers.
    assert [i.item_id for i in reader.get_user("u1").recent][:1] == ["i3"]
    writer.catch_up()
    assert fingerprint(reader) == fingerprint(writer)
    assert not reader.catalog.available[reader.catalog.index["i4"]]
    # ... and both equal what a process starting now rebuilds from the log.
    fresh = engine_at(path, **log_on)
    assert fingerprint(fresh) == fingerprint(writer)
    # The recommendations agree too.
    assert [i.item_id for i in reader.recommend("u2", 3).items] == [i.item_id for i in writer.recommend("u2", 3).items]
    for engine in (writer, reader, fresh):
        engine.close()


def test_a_user_forgotten_elsewhere_leaves_no_trace_here(tmp_path: Path, log_on: dict[str, object]) -> None:
    path = tmp_path / "k.db"
    writer, reader = (engine_at(path, popularity_half_life_s=0, **log_on),
                      engine_at(path, popularity_half_life_s=0, **log_on))
    writer.ingest_records(clicks("gone", ["a", "b", "c"]) + clicks("stays", ["b", "d"], T0 + 100))
    reader.catch_up()
    assert "gone" in reader.state.users
    writer.forget_user("gone")
    caught = reader.catch_up()
    assert caught.forgotten == ["gone"] and "gone" not in reader.state.users
    assert reader._recount is not None
    reader._recount.join(timeout=30)  # the shared counts are recounted without them
    assert fingerprint(reader) == fingerprint(writer) == fingerprint(
        engine_at(path, popularity_half_life_s=0, **log_on))
    # The log's positions never go back, though the last events written are gone.
    assert writer.store.user_events("gone") == [] and writer.store.get_user("gone") is None
    assert "gone" not in [key for _, _, key in writer.store.changes_after(0)]
    before = writer.store.last_position()
    writer.forget_user("stays")
    assert writer.store.last_position() == before
    writer.ingest_records(clicks("later", ["a"], T0 + 200))
    assert reader.catch_up().events[0].user_id == "later"
    writer.close()
    reader.close()


def test_an_old_database_gains_positions_that_are_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the schema before replicas
        db.executescript("""
            CREATE TABLE events (id INTEGER PRIMARY KEY, user_id TEXT NOT NULL, item_id TEXT NOT NULL,
                                 type TEXT NOT NULL, ts REAL NOT NULL, value REAL, context TEXT);
            CREATE INDEX events_by_user ON events (user_id);
            CREATE TABLE items (item_id TEXT PRIMARY KEY, title TEXT NOT NULL DEFAULT '',
                                text TEXT NOT NULL DEFAULT '', categories TEXT NOT NULL DEFAULT '[]',
                                attributes TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL,
                                available INTEGER NOT NULL DEFAULT 1);
            INSERT INTO items (item_id, created_at) VALUES ('a', 0);
            INSERT INTO events (user_id, item_id, type, ts) VALUES ('u', 'a', 'click', 1), ('v', 'a', 'click', 2);
        """)
    store = SQLiteStore(path)
    assert [p for p, _ in store.events_after(0)] == [1, 2] and store.last_position() == 2
    store.forget_user("v")
    assert store.append_events(clicks("w", ["a"]), []) == 3  # not 2 again
    store.close()


def test_one_leader_per_database(tmp_path: Path) -> None:
    first, second = LeaderLease.for_database(tmp_path / "k.db"), LeaderLease.for_database(tmp_path / "k.db")
    assert first.try_acquire() and not second.try_acquire()
    first.release()
    assert second.try_acquire()
    second.release()


@pytest.mark.parametrize("batch", [1, 500])
def test_a_writer_alone_applies_its_own_batches_without_reading_them_back(tmp_path: Path, batch: int) -> None:
    engine = engine_at(tmp_path / "k.db")
    reads = []
    original = engine.store.events_after
    engine.store.events_after = lambda *a, **k: reads.append(a) or original(*a, **k)  # type: ignore[method-assign]
    for start in range(0, 1000, batch):
        engine.ingest_records(clicks("u", [f"i{k}" for k in range(start, start + batch)], T0 + start))
    assert reads == [] and engine.state.events_applied == 1000
    engine.close()


def test_a_process_starts_from_a_snapshot_and_follows_the_log_from_there(tmp_path: Path) -> None:
    from kairos.replica import snapshot as snapshots

    path = tmp_path / "k.db"
    writer = engine_at(path, popularity_half_life_s=0)
    writer.upsert_items([Item(item_id=f"i{k}", title=f"item {k}") for k in range(5)])
    writer.ingest_records(clicks("u1", ["i0", "i1", "i2"]) + clicks("u2", ["i1", "i3"], T0 + 50))
    assert snapshots.reap(writer.snapshot_to(), wait=True)
    writer.ingest_records(clicks("u1", ["i4"], T0 + 100))  # after the snapshot: from the log
    writer.upsert_items([Item(item_id="i9", title="late arrival")])
    started = engine_at(path, popularity_half_life_s=0)
    assert started.started_from == "snapshot"
    replayed = engine_at(path, snapshot_interval_s=0, popularity_half_life_s=0)
    assert replayed.started_from == "log"
    assert fingerprint(started) == fingerprint(writer) == fingerprint(replayed)
    assert [i.item_id for i in started.recommend("u2", 3).items] == [i.item_id for i in writer.recommend("u2", 3).items]
    # Made under other settings, or holding a user since forgotten: not used.
    assert engine_at(path, popularity_half_life_s=60).started_from == "log"
    writer.forget_user("u1")
    assert not started.snapshot_path().exists()
    assert engine_at(path, popularity_half_life_s=0).started_from == "log"
    for engine in (writer, started, replayed):
        engine.close()


def test_the_lease_on_postgresql_has_one_holder_and_passes_on_when_it_dies(postgres_url: str) -> None:
    """Processes (on any machine) sharing a PostgreSQL log elect one leader: a session
    advisory lock, which the server releases when its holder is killed (-9 included)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from kairos.replica.leader import PostgresLease, lease_for

    assert isinstance(lease_for(postgres_url, Path("k.db")), PostgresLease)
    assert isinstance(lease_for("", Path("k.db")), LeaderLease)
    first, second = PostgresLease(postgres_url), PostgresLease(postgres_url)
    assert first.try_acquire() and first.try_acquire() and not second.try_acquire()
    first.release()
    assert second.try_acquire() and second.held
    second.release()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from kairos.replica.leader import PostgresLease; "
        f"lease = PostgresLease({postgres_url!r}); assert lease.try_acquire(); print('held', flush=True); "
        "time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert not first.try_acquire()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not first.try_acquire():
            assert time.monotonic() < deadline, "the dead holder's lock was not released"
            time.sleep(0.05)
    finally:
        holder.kill()
        first.release()
