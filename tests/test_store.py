from __future__ import annotations

from pathlib import Path

import pytest

from kairos.store import EventRecord, ItemRecord, SQLiteStore, UserRecord


def test_events_round_trip_in_acknowledgement_order(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    first = [EventRecord("u1", "a", "view", 20.0), EventRecord("u2", "b", "rating", 10.0, 4.5, {"page": "home"})]
    store.append_events(first, [ItemRecord("a", created_at=20.0), ItemRecord("b", created_at=10.0)])
    store.append_events([EventRecord("u1", "b", "click", 5.0)], [])
    assert [e for batch in store.iter_events(batch_size=2) for e in batch] == [*first, EventRecord("u1", "b", "click", 5.0)]
    assert store.user_events("u1") == [first[0], EventRecord("u1", "b", "click", 5.0)]
    assert store.count_events() == 3
    assert store.get_item("b") == ItemRecord("b", created_at=10.0)
    store.close()


def test_a_failing_batch_stores_nothing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    broken = [EventRecord("u1", "a", "view", 1.0), EventRecord("u1", None, "view", 2.0)]  # type: ignore[arg-type]
    with pytest.raises(Exception):
        store.append_events(broken, [ItemRecord("a")])
    assert store.count_events() == 0
    assert store.get_item("a") is None


def test_upserts_and_forget(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
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
    reopened = SQLiteStore(tmp_path / "s.db")
    assert reopened.count_events() == 1 and [i.item_id for i in reopened.iter_items()] == ["a"]
