from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kairos.store import (
    AlreadyAppended,
    BatchKey,
    EventRecord,
    ItemRecord,
    KeyReused,
    SQLiteStore,
    Store,
    UserRecord,
)
from kairos.store.base import forget_digest

OpenStore = Callable[[], Store]


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> OpenStore:
    """Opens the same store (a new connection each call) on SQLite or a real PostgreSQL."""
    if request.param == "sqlite":
        return lambda: SQLiteStore(tmp_path / "s.db")
    from kairos.store.postgres import PostgresStore

    url = request.getfixturevalue("postgres_url")
    return lambda: PostgresStore(url)


def test_events_round_trip_in_acknowledgement_order(open_store: OpenStore) -> None:
    store = open_store()
    first = [EventRecord("u1", "a", "view", 20.0), EventRecord("u2", "b", "rating", 10.0, 4.5, {"page": "home"})]
    store.append_events(first, [ItemRecord("a", created_at=20.0), ItemRecord("b", created_at=10.0)])
    store.append_events([EventRecord("u1", "b", "click", 5.0)], [])
    assert [e for batch in store.iter_events(batch_size=2) for e in batch] == [*first, EventRecord("u1", "b", "click", 5.0)]
    assert store.user_events("u1") == [first[0], EventRecord("u1", "b", "click", 5.0)]
    assert store.count_events() == 3
    assert store.get_item("b") == ItemRecord("b", created_at=10.0)
    store.close()


def test_a_batch_with_a_stored_key_is_not_appended_again(open_store: OpenStore) -> None:
    store, again = open_store(), open_store()  # a retry may reach another process
    batch = [EventRecord("u1", "a", "view", 1.0), EventRecord("u2", "a", "click", 2.0)]
    position = store.append_events(batch, [ItemRecord("a", created_at=1.0)], BatchKey("k-1", "digest-1"))
    with pytest.raises(AlreadyAppended) as replay:
        again.append_events(batch, [], BatchKey("k-1", "digest-1"))
    assert (replay.value.accepted, replay.value.position) == (2, position)
    with pytest.raises(KeyReused):
        again.append_events(batch[:1], [], BatchKey("k-1", "digest-2"))
    again.append_events(batch[:1], [], BatchKey("k-2", "digest-2"))
    assert store.count_events() == 3
    store.close()
    again.close()


def test_a_failing_batch_stores_nothing(open_store: OpenStore) -> None:
    store = open_store()
    broken = [EventRecord("u1", "a", "view", 1.0), EventRecord("u1", None, "view", 2.0)]  # type: ignore[arg-type]
    with pytest.raises(Exception):
        store.append_events(broken, [ItemRecord("a")])
    assert store.count_events() == 0
    assert store.get_item("a") is None


def test_upserts_and_forget(open_store: OpenStore) -> None:
    store = open_store()
    store.upsert_items([ItemRecord("a", "Old", categories=["x"])])
    store.upsert_items([ItemRecord("a", "New", "text", ["y", "z"], {"price": 3}, 7.0, False)])
    assert store.get_item("a") == ItemRecord("a", "New", "text", ["y", "z"], {"price": 3}, 7.0, False)
    store.upsert_users([UserRecord("u1", {"age": 30}, "likes tea", 1.0)])
    store.upsert_users([UserRecord("u1", {"age": 31}, "likes coffee", 2.0)])
    assert store.get_user("u1") == UserRecord("u1", {"age": 31}, "likes coffee", 1.0)  # first creation kept
    store.append_events([EventRecord("u1", "a", "view", 1.0), EventRecord("u2", "a", "view", 1.0)], [])
    assert store.forget_user("u1") == 1
    assert store.get_user("u1") is None and store.user_events("u1") == []
    assert store.count_events() == 1
    store.close()
    reopened = open_store()
    assert reopened.count_events() == 1 and [i.item_id for i in reopened.iter_items()] == ["a"]


def test_positions_change_feed_and_versions(open_store: OpenStore) -> None:
    """What replicas rely on: a batch holds consecutive positions, positions are never
    handed out twice (not even after the newest event's user is forgotten), the change
    feed keeps one row per key at its latest change, and another connection's commit
    changes `log_version`."""
    store, other = open_store(), open_store()
    assert store.last_position() == 0 and store.last_change() == 0
    assert store.append_events([EventRecord("u1", "a", "view", 1.0), EventRecord("u1", "b", "view", 2.0)],
                               [ItemRecord("a"), ItemRecord("b")]) == 2
    version = store.log_version()
    assert other.append_events([EventRecord("u2", "a", "click", 3.0)], []) == 3
    assert store.log_version() != version  # the other connection committed
    assert [position for position, _ in store.events_after(1)] == [2, 3]
    assert store.forget_user("u2") == 1  # the newest event goes ...
    assert store.append_events([EventRecord("u3", "a", "view", 4.0)], []) == 4  # ... its position stays used
    assert store.last_position() == 4
    first = store.upsert_items([ItemRecord("a", "A"), ItemRecord("b", "B")])
    again = other.upsert_items([ItemRecord("a", "A2")])
    feed = store.changes_after(0)
    assert [(kind, key) for _, kind, key in feed] == [("forget", forget_digest("u2")), ("item", "b"), ("item", "a")]
    assert again == store.last_change() == feed[-1][0] and first < again
    store.close()
    other.close()


def test_concurrent_writers_never_let_a_reader_skip_an_event(open_store: OpenStore) -> None:
    """Four connections append batches at once while a fifth tails the log by position:
    every batch is consecutive, and the tail sees each event exactly once."""
    import threading

    writers = [open_store() for _ in range(4)]
    reader = open_store()
    reader.append_events([EventRecord("seed", "x", "view", 0.0)], [ItemRecord("x")])
    ends: list[tuple[int, int]] = []

    def write(store: Store, w: int) -> None:
        for b in range(15):
            batch = [EventRecord(f"w{w}", "x", "view", float(b), None, {"n": i}) for i in range(20)]
            ends.append((store.append_events(batch, []), len(batch)))

    threads = [threading.Thread(target=write, args=(store, w)) for w, store in enumerate(writers)]
    for thread in threads:
        thread.start()
    seen: list[int] = []
    position = 1
    while any(thread.is_alive() for thread in threads) or position < 1 + 4 * 15 * 20:
        for at, _ in reader.events_after(position, 50):
            seen.append(at)
            position = at
    for thread in threads:
        thread.join()
    assert seen == list(range(2, 2 + 4 * 15 * 20))  # none skipped, none twice, in order
    assert sorted(end - size for end, size in ends) == list(range(1, 1 + 4 * 15 * 20, 20))  # consecutive
    for store in [*writers, reader]:
        store.close()


def test_a_postgresql_follower_is_woken_by_another_connections_write(request: pytest.FixtureRequest) -> None:
    """LISTEN/NOTIFY: `wait_for_writes` returns as soon as another connection commits
    (followers catch up at once instead of polling), and after its timeout otherwise."""
    import threading
    import time

    from kairos.store.postgres import PostgresStore

    url = request.getfixturevalue("postgres_url")
    follower, writer = PostgresStore(url), PostgresStore(url)
    started = time.monotonic()
    assert follower.wait_for_writes(0.2) is False and time.monotonic() - started >= 0.2
    timer = threading.Timer(0.3, lambda: writer.append_events([EventRecord("u", "a", "view", 1.0)],
                                                               [ItemRecord("a")]))
    timer.start()
    started = time.monotonic()
    assert follower.wait_for_writes(5.0) is True
    assert 0.25 < time.monotonic() - started < 2.0
    assert follower.events_after(0)[0][1] == EventRecord("u", "a", "view", 1.0)  # committed when told
    timer.join()
    assert SQLiteStore(":memory:").wait_for_writes(5.0) is False  # polls instead
    follower.close()
    writer.close()
