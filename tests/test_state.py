from __future__ import annotations

import math
import random

import numpy as np
import pytest

from kairos.config import DAY, Settings
from kairos.state import Catalog, OnlineState
from kairos.state.decay import ForwardDecay
from kairos.state.popularity import DecayedPopularity
from kairos.store import EventRecord, ItemRecord


def make_state(**overrides: object) -> OnlineState:
    catalog = Catalog()
    for name in "abcdefgh":
        catalog.upsert(ItemRecord(name, categories=["vowel" if name in "aeiou" else "consonant"]))
    return OnlineState(Settings(**overrides), catalog)  # type: ignore[arg-type]


def test_forward_decay_matches_naive_decay_across_rescales() -> None:
    half_life = 3600.0
    popularity = DecayedPopularity(half_life)
    rng = random.Random(1)
    events = sorted((rng.uniform(0, 2_000 * half_life), rng.randrange(3), rng.uniform(1, 5)) for _ in range(400))
    for t, item, weight in events:
        popularity.add(item, ("c",), weight, t)
    now = events[-1][0] + 100
    naive = np.zeros(3)
    for t, item, weight in events:
        naive[item] += weight * 0.5 ** ((now - t) / half_life)
    assert np.allclose(popularity.item_scores(3, now), naive, rtol=1e-9, atol=1e-300)
    assert math.isclose(popularity.category_scores(now)["c"], naive.sum(), rel_tol=1e-9)
    assert ForwardDecay(0).now_factor(1e9) == 1.0  # half-life 0: no decay


def test_ranking_scores_survive_years_of_silence() -> None:
    popularity = DecayedPopularity(DAY)
    popularity.add(0, (), 1.0, 0.0)
    popularity.add(1, (), 3.0, 0.0)
    assert popularity.item_scores(2, 10 * 365 * DAY).max() == 0.0  # underflows...
    assert list(np.argsort(-popularity.ranking_scores(2))) == [1, 0]  # ...the order does not


def click(user: str, item: str, t: float, kind: str = "click", value: float | None = None) -> EventRecord:
    return EventRecord(user, item, kind, t, value)


def test_covisitation_respects_window_lookback_and_direction() -> None:
    state = make_state(covisit_window_s=100, covisit_lookback=2, covisit_backward_weight=0.5,
                       covisit_half_life_s=0)
    idx = state.catalog.index
    state.apply([click("u", "a", 0), click("u", "b", 10), click("u", "c", 20), click("u", "d", 30),
                 click("u", "e", 500)])  # e is outside the window of everything before
    assert state.covisit.count(idx["a"], idx["b"], 0) == 1.0
    assert state.covisit.count(idx["b"], idx["a"], 0) == 0.5
    assert state.covisit.count(idx["a"], idx["c"], 0) == 1.0
    assert state.covisit.count(idx["a"], idx["d"], 0) == 0.0  # beyond lookback 2
    assert state.covisit.neighbours(idx["e"])[0] == {}


def test_covisitation_rows_are_capped_and_keep_their_totals() -> None:
    rng = random.Random(5)
    catalog_names = [f"i{k}" for k in range(40)]
    events = [click(f"u{rng.randrange(20)}", rng.choice(catalog_names), float(t)) for t in range(4000)]

    def state_with(cap: int) -> OnlineState:
        catalog = Catalog()
        for name in catalog_names:
            catalog.upsert(ItemRecord(name))
        state = OnlineState(Settings(covisit_max_neighbours=cap, covisit_half_life_s=0), catalog)
        state.apply(events)
        return state

    capped, full = state_with(8), state_with(0)
    widest = max(len(full.covisit.neighbours(a)[0]) for a in range(40))
    assert widest > 20  # the uncapped rows do outgrow the cap
    for a in range(40):
        row, total = capped.covisit.neighbours(a)
        whole, whole_total = full.covisit.neighbours(a)
        assert len(row) <= 16  # cut back to 8 once past twice 8
        assert math.isclose(total, whole_total)  # shares stay shares of every visit
        assert all(count <= whole[b] + 1e-9 for b, count in row.items())  # a cut only loses counts
    # A cap above every row's width changes nothing.
    assert state_with(widest).covisit.neighbours(3) == full.covisit.neighbours(3)


def test_covisitation_row_arrays_follow_every_change_of_the_row() -> None:
    state = make_state(covisit_half_life_s=DAY)
    idx = state.catalog.index

    def as_dict(a: int) -> dict[int, float]:
        items, counts, total = state.covisit.row_arrays(a)
        assert math.isclose(total, state.covisit.neighbours(a)[1])
        return dict(zip(items.tolist(), counts.tolist(), strict=True))

    state.apply([click("u", "a", 0), click("u", "b", 10)])
    assert as_dict(idx["a"]) == state.covisit.neighbours(idx["a"])[0] == {idx["b"]: 1.0}
    state.apply([click("v", "a", 20), click("v", "c", 30)])  # a's row changes: the arrays follow
    assert as_dict(idx["a"]) == state.covisit.neighbours(idx["a"])[0]
    assert len(as_dict(idx["a"])) == 2
    state.apply([click("w", "a", 400 * DAY), click("w", "d", 400 * DAY + 1)])  # decay rescales every row
    assert as_dict(idx["a"]) == state.covisit.neighbours(idx["a"])[0]
    state.forget("v", [click("v", "a", 20), click("v", "c", 30)])
    assert as_dict(idx["a"]) == state.covisit.neighbours(idx["a"])[0]


def test_impressions_and_negatives_are_not_visits() -> None:
    state = make_state()
    idx = state.catalog.index
    state.apply([click("u", "a", 0), click("u", "b", 1, "impression"), click("u", "c", 2, "dislike"),
                 click("u", "d", 3, "rating", 1.0), click("u", "e", 4, "rating", 5.0)])
    user = state.users["u"]
    assert [step.item for step in user.recent] == [idx[x] for x in "acde"]  # impressions are not in the sequence
    assert user.seen == {idx["a"], idx["d"], idx["e"]}
    assert user.event_count == 5
    scores = state.popularity.ranking_scores(len(state.catalog))
    assert scores[idx["c"]] == scores[idx["d"]] == scores[idx["b"]] == 0  # no positive weight
    assert scores[idx["e"]] > scores[idx["a"]] > 0  # a 5-star rating outweighs a click


def test_sequence_is_time_ordered_and_bounded() -> None:
    state = make_state(sequence_length=3)
    state.apply([click("u", "a", 10), click("u", "b", 30), click("u", "c", 20), click("u", "d", 40)])
    steps = state.users["u"].recent
    assert [state.catalog.ids[s.item] for s in steps] == ["c", "b", "d"]
    assert [s.timestamp for s in steps] == [20, 30, 40]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_forget_removes_exactly_what_the_user_added(seed: int) -> None:
    rng = random.Random(seed)
    events = [click(f"u{rng.randrange(6)}", rng.choice("abcdefgh"), rng.uniform(0, 30 * DAY),
                    rng.choice(["view", "click", "purchase", "skip", "impression"])) for _ in range(600)]
    everyone = make_state()
    everyone.apply(events)
    everyone.forget("u3", [e for e in events if e.user_id == "u3"])
    without = make_state()
    without.apply([e for e in events if e.user_id != "u3"])
    now = 31 * DAY
    n = len(everyone.catalog)
    assert np.allclose(everyone.popularity.item_scores(n, now), without.popularity.item_scores(n, now),
                       rtol=1e-9, atol=1e-12)
    for a in range(n):
        left, _ = everyone.covisit.neighbours(a)
        right, _ = without.covisit.neighbours(a)
        assert left.keys() == right.keys()
        for b in left:
            assert math.isclose(everyone.covisit.count(a, b, now), without.covisit.count(a, b, now), rel_tol=1e-9)
    assert "u3" not in everyone.users
    assert everyone.events_applied == without.events_applied


def test_popularity_of_a_late_index_leaves_the_others_at_zero() -> None:
    popularity = DecayedPopularity(0)
    for item in range(1000):
        popularity.add(item, (), 1.0, 0.0)
    popularity.add(5000, (), 2.0, 0.0)  # grows the array well past its size
    scores = popularity.ranking_scores(6000)
    assert scores[:1000].sum() == 1000 and scores[5000] == 2.0
    assert scores[1000:5000].sum() == 0 and scores[5001:].sum() == 0
    asked = np.array([0, 999, 1000, 5000, 4999, 10**6])  # in the array, between, past its end
    assert popularity.engaged_many(asked).tolist() == [popularity.engaged(int(i)) for i in asked] \
        == [True, True, False, True, False, False]


@pytest.mark.parametrize("seed", [0, 1])
def test_a_batch_applies_exactly_as_its_events_one_by_one(seed: int) -> None:
    """apply() sums popularity once per batch: the state must be what applying each event
    alone gives — late events, ratings, negatives and a decay rescale included."""
    rng = random.Random(seed)
    kinds = ["view", "click", "cart", "purchase", "impression", "skip", "rating", "dislike"]
    events = []
    t = 0.0
    for _ in range(600):
        t += rng.uniform(0, 3 * DAY)  # ~900 days: popularity's 1-day half-life rescales
        kind = rng.choice(kinds)
        late = rng.random() < 0.2  # arrives after newer events of its user
        events.append(click(f"u{rng.randrange(12)}", rng.choice("abcdefgh"),
                            t - rng.uniform(0, 2 * DAY) if late else t, kind,
                            rng.choice([0.5, 3.0, 5.0]) if kind == "rating" else None))
    one_batch, one_by_one = make_state(), make_state()
    for start in range(0, len(events), 50):  # ~75 days a batch: one crosses the rescale
        one_batch.apply(events[start:start + 50])
    for event in events:  # the event-by-event path (forgetting replays through it)
        one_by_one._apply(event, one_by_one.users, +1.0)
        one_by_one.events_applied += 1
    n = len(one_batch.catalog)
    for a, b in ((one_batch.popularity, one_by_one.popularity), (one_batch.trending, one_by_one.trending)):
        assert np.allclose(a.item_scores(n, t), b.item_scores(n, t), rtol=1e-9, atol=0)
        assert a.category_scores(t).keys() == b.category_scores(t).keys()
        for name, value in a.category_scores(t).items():
            assert math.isclose(value, b.category_scores(t)[name], rel_tol=1e-9)
    assert one_batch.events_applied == one_by_one.events_applied == len(events)
    assert one_batch.users.keys() == one_by_one.users.keys()
    for user, state in one_batch.users.items():
        assert state.recent == one_by_one.users[user].recent
        assert state.seen == one_by_one.users[user].seen
    for a in range(n):
        row, total = one_batch.covisit.neighbours(a)
        other_row, other_total = one_by_one.covisit.neighbours(a)
        assert row.keys() == other_row.keys()
        assert all(math.isclose(row[b], other_row[b], rel_tol=1e-9) for b in row)
        assert math.isclose(total, other_total, rel_tol=1e-9)
        assert math.isclose(total, sum(row.values()), rel_tol=1e-9)  # a row's total is its sum


def test_kept_leaders_and_total_match_a_full_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """The popular source reads the kept leaders (state/popularity.py): after gains,
    outsiders overtaking them, rescales and subtractions they are what a scan finds."""
    import kairos.state.popularity as module
    from kairos.sources.base import top_k

    monkeypatch.setattr(module, "LEADERS_KEPT", 20)
    rng = np.random.default_rng(3)
    popularity = DecayedPopularity(DAY)
    t = 0.0
    for step in range(300):
        t += float(rng.uniform(0, 0.5 * DAY))  # rescales on the way
        items = rng.integers(0, 200, size=int(rng.integers(1, 30)))
        if step % 3:
            popularity.add_many(items, None, rng.uniform(0.1, 3.0, len(items)), np.full(len(items), t))
        else:
            for item in items.tolist():
                popularity.add(item, (), float(rng.uniform(-1.0, 3.0)), t)  # negatives: forgetting
        scores = popularity.ranking_scores(200)
        leaders, values, complete = popularity.leaders()
        expected = top_k(scores, len(leaders))
        assert leaders.tolist() == expected.items.tolist() and np.allclose(values, expected.scores)
        assert complete == (int((scores > 0).sum()) <= 20)
        assert math.isclose(popularity.total(), float(scores.sum()), rel_tol=1e-9)
        assert np.array_equal(popularity.values(np.array([0, 5, 10_000])), [scores[0], scores[5], 0.0])
