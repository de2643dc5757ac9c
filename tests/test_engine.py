from __future__ import annotations

from pathlib import Path

import pytest

from kairos.clock import SimulatedClock
from kairos.config import Settings
from kairos.engine import Engine, NotFound
from kairos.schema import Event, Item, ItemFields, User

T0 = 1_700_000_000.0


def ev(user: str, item: str, t: float, kind: str = "click", value: float | None = None) -> Event:
    return Event(user_id=user, item_id=item, type=kind, timestamp=t, value=value)


def ids(result: object) -> list[str]:
    return [i.item_id for i in result.items]  # type: ignore[attr-defined]


def test_an_empty_catalogue_answers_with_fresh_items(engine: Engine, clock: SimulatedClock) -> None:
    engine.upsert_items([Item(item_id="old", created_at=T0 - 100), Item(item_id="new", created_at=T0)])
    result = engine.recommend("stranger", 5)
    assert ids(result) == ["new", "old"]
    assert result.items[0].sources == ["fresh"]


def test_unknown_items_in_events_become_bare_items(engine: Engine) -> None:
    engine.ingest([ev("u", "mystery", T0 + 5)])
    item = engine.get_item("mystery")
    assert item.title == "" and item.available and item.created_at == T0 + 5
    assert engine.store.get_item("mystery") is not None


def test_events_without_timestamp_happen_at_the_clock_time(engine: Engine, clock: SimulatedClock) -> None:
    engine.ingest([Event(user_id="u", item_id="i", type="view")])
    assert engine.get_user("u").recent[0].timestamp == clock.now()


def test_filters_seen_unavailable_and_category(engine: Engine) -> None:
    engine.upsert_items([Item(item_id=f"i{k}", categories=["even" if k % 2 == 0 else "odd"]) for k in range(6)])
    engine.ingest([ev(f"fan{u}", f"i{k}", T0 + u) for u in range(3) for k in range(6)])
    engine.ingest([ev("me", "i0", T0 + 10)])
    assert "i0" not in ids(engine.recommend("me", 10))
    assert "i0" in ids(engine.recommend("me", 10, exclude_seen=False))
    assert set(ids(engine.recommend("me", 10, category="odd"))) == {"i1", "i3", "i5"}
    assert ids(engine.recommend("me", 10, category="no-such-category")) == []
    engine.delete_item("i1")
    assert "i1" not in ids(engine.recommend("me", 10))
    assert "i1" not in ids(engine.similar("i0", 10))


def test_the_next_recommendation_reflects_the_last_event(engine: Engine) -> None:
    for u in range(10):
        engine.ingest([ev(f"c{u}", "tent", T0 + u), ev(f"c{u}", "sleeping-bag", T0 + u + 30)])
    for u in range(20):
        engine.ingest([ev(f"p{u}", "bestseller", T0 + u)])
    assert ids(engine.recommend("me", 1)) == ["bestseller"]
    engine.ingest([ev("me", "tent", T0 + 100)])
    top = engine.recommend("me", 1).items[0]
    assert top.item_id == "sleeping-bag" and top.sources[0] == "covisit"


def test_upsert_keeps_created_at_and_replaces_fields(engine: Engine, clock: SimulatedClock) -> None:
    first = engine.upsert_item("a", ItemFields(title="A", categories=["x"]))
    clock.advance(3600)
    second = engine.upsert_item("a", ItemFields(title="A2"))
    assert second.created_at == first.created_at == clock.now() - 3600
    assert second.categories == [] and second.title == "A2"
    assert engine.catalog.category_mask("x").sum() == 0


def test_users_profile_and_forget(engine: Engine) -> None:
    with pytest.raises(NotFound):
        engine.get_user("u")
    engine.upsert_user(User(user_id="u", attributes={"country": "FR"}, text="cheese"))
    engine.ingest([ev("u", "a", T0), ev("u", "b", T0 + 1)])
    view = engine.get_user("u")
    assert view.attributes == {"country": "FR"} and view.event_count == 2
    assert [s.item_id for s in view.recent] == ["b", "a"]  # newest first
    assert engine.forget_user("u") == 2
    with pytest.raises(NotFound):
        engine.get_user("u")
    with pytest.raises(NotFound):
        engine.forget_user("u")


def test_restart_replays_the_store_into_the_same_state(tmp_path: Path) -> None:
    settings = Settings(db_path=tmp_path / "k.db")
    clock = SimulatedClock(T0 + 10_000)
    live = Engine(settings, clock=clock)
    live.upsert_items([Item(item_id=f"i{k}", categories=[f"c{k % 3}"]) for k in range(12)])
    # Out-of-order timestamps: the replay must follow acknowledgement order, not time.
    live.ingest([ev(f"u{u}", f"i{(u * 5 + k) % 12}", T0 + ((u * 37 + k * 11) % 50) * 60) for u in range(8) for k in range(9)])
    live.ingest([ev("u1", "i3", T0 + 1, "rating", 2.0), ev("u2", "i4", T0 + 2, "skip")])
    users = ("u0", "u1", "u2", "nobody")
    before = {u: live.recommend(u, 6, request_id="r") for u in users}
    profiles = {u: live.get_user(u) for u in users[:3]}
    live.close()
    rebuilt = Engine(settings, clock=clock)
    assert {u: rebuilt.recommend(u, 6, request_id="r") for u in users} == before
    assert {u: rebuilt.get_user(u) for u in users[:3]} == profiles
