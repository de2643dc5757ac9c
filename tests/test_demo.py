"""The demo generator: deterministic, consistent, and with a learnable sequential pattern."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kairos.config import Settings
from kairos.datasets.demo import CATEGORIES, DemoConfig, DemoData, generate_demo, import_demo
from kairos.engine import Engine
from kairos.schema import NON_VISIT_TYPES, Event, EventType

SMALL = DemoConfig(n_users=100, n_items=120, n_events=5_000, seed=3)


@pytest.fixture(scope="module")
def small() -> DemoData:
    return generate_demo(SMALL)


def all_events(data: DemoData) -> list[Event]:
    return [event for batch in data.iter_event_batches(batch_size=1_234) for event in batch]


def test_same_seed_same_data_and_another_seed_differs(small: DemoData) -> None:
    again = generate_demo(DemoConfig(n_users=100, n_items=120, n_events=5_000, seed=3))
    assert again.items == small.items
    assert again.users == small.users
    assert again.follow_ups == small.follow_ups
    assert all_events(again) == all_events(small)
    other = generate_demo(DemoConfig(n_users=100, n_items=120, n_events=5_000, seed=4))
    assert other.items != small.items
    assert all_events(other) != all_events(small)


def test_counts_and_readable_catalogue(small: DemoData) -> None:
    assert len(small.items) == 120 and len(small.users) == 100
    events = all_events(small)
    assert len(events) == small.n_events == 5_000
    assert len({item.item_id for item in small.items}) == 120
    assert len({user.user_id for user in small.users}) == 100
    known = {category.name for category in CATEGORIES}
    for item in small.items:
        assert item.title and item.text.endswith(".")
        assert 1 <= len(item.categories) <= 2 and set(item.categories) <= known
        assert item.attributes["price"] > 0 and item.attributes["brand"]
    assert len({item.categories[0] for item in small.items}) == len(CATEGORIES)
    assert all(user.text and {"country", "age_band"} <= user.attributes.keys() for user in small.users)
    assert all(1 <= len(targets) <= 3 for targets in small.follow_ups.values())
    late = [item for item in small.items if item.created_at and item.created_at > SMALL.start]
    assert late, "some items should arrive during the period"
    types = {event.type for event in events}
    assert {EventType.view, EventType.click, EventType.purchase, EventType.rating,
            EventType.skip, EventType.dislike} <= types
    ratings = [event.value for event in events if event.type == EventType.rating]
    assert ratings and all(value in {1.0, 2.0, 3.0, 4.0, 5.0} for value in ratings)


def test_events_sorted_consistent_and_after_item_creation(small: DemoData) -> None:
    events = all_events(small)
    times = [event.timestamp for event in events]
    assert times == sorted(times)
    assert SMALL.start <= times[0] and times[-1] <= SMALL.end
    users = {user.user_id for user in small.users}
    created = {item.item_id: item.created_at for item in small.items}
    last_time: dict[str, float] = {}
    for event in events:
        assert event.user_id in users and event.item_id in created
        assert created[event.item_id] <= event.timestamp  # type: ignore[operator]
        assert event.timestamp > last_time.get(event.user_id, -1.0)  # type: ignore[operator]
        last_time[event.user_id] = event.timestamp  # type: ignore[assignment]
    assert len(last_time) == len(users)


def test_batches_can_be_sliced(small: DemoData) -> None:
    whole = all_events(small)
    part = [e for batch in small.iter_event_batches(batch_size=700, start=1_000, stop=3_000)
            for e in batch]
    assert part == whole[1_000:3_000]


def test_next_item_follows_up_more_than_chance(small: DemoData) -> None:
    follows = total = 0
    previous: dict[str, str] = {}
    for event in all_events(small):
        if event.type != EventType.view:
            continue
        before = previous.get(event.user_id)
        if before is not None and before != event.item_id:
            total += 1
            follows += event.item_id in small.follow_ups[before]
        previous[event.user_id] = event.item_id
    assert follows / total > 0.3


def visits(data: DemoData) -> dict[str, list[str]]:
    """Each user's visited items in time order (what co-visitation and `seen` count)."""
    out: dict[str, list[str]] = {}
    for event in all_events(data):
        if event.type not in NON_VISIT_TYPES:
            out.setdefault(event.user_id, []).append(event.item_id)
    return out


def follow_up_hit_rate(engine: Engine, data: DemoData) -> float:
    """Share of users whose top 10 holds a follow-up of their last visit, among users
    with a follow-up left to recommend (seen items are never recommended)."""
    hits = asked = 0
    for user_id, items in visits(data).items():
        open_follow_ups = set(data.follow_ups[items[-1]]) - set(items)
        if not open_follow_ups:
            continue
        asked += 1
        recommended = {item.item_id for item in engine.recommend(user_id, 10).items}
        hits += bool(recommended & open_follow_ups)
    assert asked >= 20
    return hits / asked


def test_import_then_covisitation_beats_popularity(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    engine = Engine(Settings(db_path=db))
    report = import_demo(engine, SMALL, quiet=True)
    assert (report.items, report.users, report.events) == (120, 100, 5_000)
    assert "5,000 events" in str(report)
    stats = engine.stats()
    assert (stats["items"], stats["users"], stats["events"]) == (120, 100, 5_000)
    data = generate_demo(SMALL)
    with_covisit = follow_up_hit_rate(engine, data)
    engine.close()
    popular = Engine(Settings(db_path=db, source_weights={"popular": 1.0}))
    popular_only = follow_up_hit_rate(popular, data)
    popular.close()
    assert with_covisit >= 0.5 and with_covisit > popular_only + 0.3, (with_covisit, popular_only)


def test_generates_a_million_events_quickly_enough_to_benchmark() -> None:
    """Compact arrays only (no Event objects): the scale the benchmark uses."""
    data = generate_demo(DemoConfig(n_users=6_000, n_items=4_000, n_events=200_000, seed=1))
    assert data.n_events == 200_000
    assert np.all(np.diff(data.event_time) >= 0)
