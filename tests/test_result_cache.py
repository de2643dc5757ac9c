"""The result cache (serving/cache.py): a list is kept only while nothing it was made of
moved, and never outlives the user's own event, an item's withdrawal or a forget."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kairos.clock import SimulatedClock
from kairos.config import Settings
from kairos.engine import Engine
from kairos.schema import Event, Item, ItemFields, User

T0 = 1_700_000_000.0


@pytest.fixture
def cached(tmp_path: Path, clock: SimulatedClock) -> Iterator[Engine]:
    engine = Engine(Settings(db_path=tmp_path / "kairos.db", result_cache_ttl_s=600), clock=clock)
    engine.upsert_items([Item(item_id=f"i{k}", title=f"item {k}", categories=["c"]) for k in range(12)])
    for k in range(40):  # some behaviour: co-visitation and popularity to rank by
        engine.ingest([Event(user_id=f"u{k % 5}", item_id=f"i{k % 12}", type="click", timestamp=T0 + k)])
    yield engine
    engine.close()


def ids(engine: Engine, user: str, **options: object) -> list[str]:
    return [item.item_id for item in engine.recommend(user, 5, **options).items]  # type: ignore[arg-type]


def test_a_repeated_request_is_served_from_the_cache(cached: Engine) -> None:
    cache = cached.recommender.cache
    first = cached.recommend("u1", 5)
    again = cached.recommend("u1", 5)
    assert [i.item_id for i in again.items] == [i.item_id for i in first.items]
    assert again.request_id != first.request_id  # the envelope is the request's own
    assert (cache.hits, cache.misses) == (1, 1)
    ids(cached, "u1", category="c")  # other options: another list
    assert cache.misses == 2


def test_the_users_own_event_always_gets_a_fresh_list(cached: Engine) -> None:
    before = ids(cached, "u1")
    cached.ingest([Event(user_id="u1", item_id=before[0], type="click", timestamp=T0 + 100)])
    after = ids(cached, "u1")
    assert before[0] not in after  # seen now: excluded, so not the cached list
    assert cached.recommender.cache.hits == 0


def test_a_withdrawn_or_changed_item_leaves_every_cached_list(cached: Engine) -> None:
    before = ids(cached, "u2")
    cached.delete_item(before[0])
    assert before[0] not in ids(cached, "u2")
    cached.upsert_item("fresh", ItemFields(title="brand new", categories=["c"]))
    assert cached.recommender.cache.hits == 0


def test_stated_interests_and_forgetting_reach_the_cache(cached: Engine) -> None:
    ids(cached, "u3")
    cached.upsert_user(User(user_id="u3", text="items about item 7"))
    ids(cached, "u3")
    assert cached.recommender.cache.hits == 0  # the profile moved: a fresh list
    cached.forget_user("u3")
    assert not any(key[0] == "u3" for key in cached.recommender.cache._lists)


def test_off_by_default(engine: Engine) -> None:
    engine.upsert_items([Item(item_id="a")])
    engine.recommend("u", 5)
    engine.recommend("u", 5)
    assert not engine.recommender.cache.enabled and len(engine.recommender.cache) == 0
