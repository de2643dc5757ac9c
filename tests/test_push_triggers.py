"""Each trigger, end to end inside one process on a simulated clock: the engine, the
push service's decider (`step`), targeting, the policy and the outbox. Delivery is
covered in test_push_channels.py and through a real server in test_push_e2e.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kairos.clock import SimulatedClock
from kairos.config import Settings
from kairos.engine import Engine
from kairos.push.schema import CampaignRequest, PushPreferences
from kairos.push.service import PushService
from kairos.schema import Event, Item

T0 = 1_750_068_000.0  # Monday 2025-06-16 10:00 UTC (12:00 in Berlin)
SHOP = {
    "espresso-machine": ("Espresso machine", "coffee", "Pump espresso machine with a steam wand for milk."),
    "grinder": ("Coffee grinder", "coffee", "Burr grinder for espresso and filter coffee."),
    "beans": ("Espresso beans", "coffee", "Dark roast coffee beans for espresso."),
    "teapot": ("Teapot", "tea", "Cast iron teapot for loose leaf tea."),
    "green-tea": ("Green tea", "tea", "Japanese sencha green tea leaves."),
    "yoga-mat": ("Yoga mat", "sport", "Non-slip mat for yoga and pilates."),
    "dumbbells": ("Dumbbells", "sport", "A pair of adjustable dumbbells for strength training."),
}
COFFEE = [f"coffee{k}" for k in range(8)]
TEA = [f"tea{k}" for k in range(8)]
SPORT = [f"sport{k}" for k in range(4)]


def shop_items() -> list[Item]:
    return [Item(item_id=i, title=t, categories=[c], text=x, attributes={"price": 100.0}, created_at=T0 - 86_400 * 30)
            for i, (t, c, x) in SHOP.items()]


def history() -> list[Event]:
    events = []
    taste = {**{u: ["espresso-machine", "grinder", "beans"] for u in COFFEE},
             **{u: ["teapot", "green-tea"] for u in TEA}, **{u: ["yoga-mat", "dumbbells"] for u in SPORT}}
    for n, (user, items) in enumerate(taste.items()):
        for k, item in enumerate(items):
            events.append(Event(user_id=user, item_id=item, type="click", timestamp=T0 - 7200 + 60 * k + n))
    return events


def make(tmp_path: Path, clock: SimulatedClock, **settings: Any) -> tuple[Engine, PushService]:
    engine = Engine(Settings(db_path=tmp_path / "shop.db", sqlite_synchronous="NORMAL",
                             push_default_timezone="Europe/Berlin", **settings), clock=clock)
    engine.upsert_items(shop_items())
    engine.ingest(history())
    push = PushService(engine, deliver=False)
    push.step()
    return engine, push


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock(T0)


@pytest.fixture
def shop(tmp_path: Path, clock: SimulatedClock) -> Iterator[tuple[Engine, PushService]]:
    engine, push = make(tmp_path, clock, push_triggers={"item_created": {"max_users": 8},
                                                        "next_best": {"enabled": False},
                                                        "digest": {"enabled": False}})
    yield engine, push
    push.close()
    engine.close()


def all_notifications(push: PushService) -> list[Any]:
    users = {row[0] for row in push.db.query("SELECT DISTINCT user_id FROM push_notifications")}
    return [n for u in sorted(users) for n in push.notifications(u, None, 1000)]


def test_a_new_item_reaches_the_users_whose_taste_it_matches(shop: tuple[Engine, PushService]) -> None:
    engine, push = shop
    frother = Item(item_id="frother", title="Milk frother", categories=["coffee"],
                   text="Froths milk for cappuccino and latte with your espresso.")
    engine.upsert_items([frother])
    push.step()
    sent = all_notifications(push)
    assert len(sent) == 8 and {n.status for n in sent} == {"scheduled"}
    assert {n.user_id for n in sent} == set(COFFEE)  # nobody from tea or sport among the best 8
    assert all(n.type == "item_created" and n.item_id == "frother" and 0 < n.p < 1 for n in sent)
    assert all(n.reason.startswith("because you clicked '") for n in sent)
    assert {n.reason for n in sent} <= {f"because you clicked '{t}'" for t, _, _ in SHOP.values()}
    # The same upsert again (a client retry) notifies nobody twice.
    engine.upsert_items([frother])
    push.step()
    assert len(all_notifications(push)) == 8
    # A new item someone already engaged with is not "new": no trigger.
    engine.ingest([Event(user_id="tea0", item_id="kettle", type="view", timestamp=T0)])
    engine.upsert_items([Item(item_id="kettle", title="Kettle", categories=["tea"])])
    push.step()
    assert push.triggers.get("item_created", "kettle") is None


def test_back_in_stock_and_price_drop_reach_who_looked_and_did_not_buy(shop: tuple[Engine, PushService],
                                                                      clock: SimulatedClock) -> None:
    engine, push = shop
    engine.ingest([Event(user_id="sport0", item_id="teapot", type="view", timestamp=T0),
                   Event(user_id="sport1", item_id="teapot", type="cart", timestamp=T0 + 1),
                   Event(user_id="sport2", item_id="teapot", type="purchase", timestamp=T0 + 2)])
    teapot = shop_items()[3]
    teapot.available = False
    engine.upsert_items([teapot])
    push.step()
    teapot.available = True
    engine.upsert_items([teapot])
    push.step()
    back = [n for n in all_notifications(push) if n.type == "back_in_stock"]
    assert {n.user_id for n in back} == {"sport0", "sport1", *TEA}  # tea users clicked it; sport2 bought it
    assert "sport2" not in {n.user_id for n in back}
    engine.upsert_items([teapot])  # still available: no transition, nothing new
    push.step()
    assert len([n for n in all_notifications(push) if n.type == "back_in_stock"]) == len(back)
    # Price: a 10% drop notifies (later: the minimum gap defers it behind back-in-stock), 1% does not.
    clock.advance(3 * 86_400)
    cheaper = teapot.model_copy(update={"attributes": {"price": 90.0}})
    engine.upsert_items([cheaper])
    push.step()
    drops = [n for n in all_notifications(push) if n.type == "price_drop"]
    assert {n.user_id for n in drops} == {"sport0", "sport1", *TEA}
    assert drops[0].body == "'Teapot' now costs 90 (was 100)."
    # The same item twice within 30 days: suppressed, and counted with the reason.
    assert {n.status for n in drops} == {"suppressed"} and {n.suppressed_reason for n in drops} == {"same_item"}
    engine.upsert_items([cheaper.model_copy(update={"attributes": {"price": 89.5}})])
    push.step()
    assert len([n for n in all_notifications(push) if n.type == "price_drop"]) == len(drops)


def test_an_abandoned_cart_gets_one_reminder_a_bought_one_none(shop: tuple[Engine, PushService],
                                                              clock: SimulatedClock) -> None:
    engine, push = shop
    cart = Event(user_id="coffee0", item_id="teapot", type="cart", timestamp=T0)
    engine.ingest([cart, Event(user_id="coffee1", item_id="teapot", type="cart", timestamp=T0)])
    engine.ingest([Event(user_id="coffee1", item_id="teapot", type="purchase", timestamp=T0 + 600)])
    engine.ingest([cart])  # the same cart event re-sent: no second reminder
    push.step()
    clock.advance(1000)
    push.step()
    assert not [n for n in all_notifications(push) if n.type == "cart_abandoned"]  # not yet: after_s is 1800
    clock.advance(900)
    push.step()
    reminders = [n for n in all_notifications(push) if n.type == "cart_abandoned"]
    assert [(n.user_id, n.item_id, n.status) for n in reminders] == [("coffee0", "teapot", "scheduled")]
    assert reminders[0].title == "Still thinking about 'Teapot'?"
    assert push.triggers.get("cart_abandoned", f"coffee1|teapot|{T0:.6f}")["outcome"]["skipped"] == "purchased"


def test_a_campaign_ranks_its_audience_applies_the_policy_and_is_idempotent(
        shop: tuple[Engine, PushService]) -> None:
    engine, push = shop
    push.set_preferences("tea1", PushPreferences(opt_out=True))
    campaign, created = push.create_campaign(CampaignRequest(id="c1", item_id="green-tea",
                                                             audience={"max_users": 3}))
    assert created and campaign.state == "pending"
    push.step()
    campaign = push.campaign("c1")
    assert campaign is not None and campaign.state == "decided" and campaign.counts == {"scheduled": 3}
    again, created = push.create_campaign(CampaignRequest(id="c1", item_id="beans", audience={"max_users": 9}))
    push.step()
    assert not created and push.campaign("c1").counts == {"scheduled": 3}
    assert again.request["item_id"] == "green-tea"
    # Named users: Kairos only applies the policy (tea1 opted out; coffee0 took green-tea? no: a budget of 2).
    push.create_campaign(CampaignRequest(id="c2", item_id="yoga-mat", budget=2,
                                         audience={"user_ids": ["tea1", "coffee0", "coffee2", "coffee3"]}))
    push.step()
    c2 = push.campaign("c2")
    assert c2.counts == {"scheduled": 2, "suppressed": 2}
    assert c2.suppressed == {"opt_out": 1, "campaign_budget": 1}
    # Several items: each user gets the one they are likeliest to engage with.
    push.create_campaign(CampaignRequest(id="c3", item_ids=["dumbbells", "yoga-mat"], audience={"user_ids": TEA[2:4]}))
    push.step()
    rows = [n for n in all_notifications(push) if n.campaign_id == "c3"]
    assert len(rows) == 2 and {n.item_id for n in rows} <= {"dumbbells", "yoga-mat"}


def test_optimal_send_time_defers_to_the_users_most_active_hour(shop: tuple[Engine, PushService],
                                                                clock: SimulatedClock) -> None:
    engine, push = shop
    # tea5 is active at 19:xx Berlin (17:xx UTC) on most days.
    engine.ingest([Event(user_id="tea5", item_id="teapot", type="view", timestamp=T0 - d * 86_400 + 7 * 3600 + 60)
                   for d in range(1, 8)])
    push.create_campaign(CampaignRequest(id="evening", item_id="dumbbells", send_time="optimal",
                                         audience={"user_ids": ["tea5"]}))
    push.step()
    (row,) = push.notifications("tea5", None, 10)
    assert row.status == "scheduled" and row.due_at == T0 + 7 * 3600  # 19:00 Berlin the same day


def test_next_best_after_the_session_ends(tmp_path: Path, clock: SimulatedClock) -> None:
    engine, push = make(tmp_path, clock, push_triggers={"next_best": {"min_p": 0.0}, "digest": {"enabled": False},
                                                        "item_created": {"enabled": False}})
    engine.ingest([Event(user_id="coffee0", item_id="grinder", type="view", timestamp=T0)])
    push.step()
    clock.advance(1000)
    engine.ingest([Event(user_id="coffee0", item_id="beans", type="view", timestamp=clock.now())])
    push.step()
    clock.advance(1500)
    push.step()
    assert not push.notifications("coffee0", None, 10)  # 2500 s after the first view, but the session went on
    clock.advance(301)  # 1801 s after the last one: the user left
    push.step()
    (row,) = push.notifications("coffee0", None, 10)
    assert row.type == "next_best" and row.status == "scheduled"
    assert row.item_id == engine.recommend("coffee0", 1).items[0].item_id
    push.close()
    engine.close()


def test_a_digest_once_a_day_at_the_users_best_hour(tmp_path: Path, clock: SimulatedClock) -> None:
    engine, push = make(tmp_path, clock, push_triggers={"next_best": {"enabled": False},
                                                        "item_created": {"enabled": False}, "digest": {"n": 3}})
    # coffee0 is active at 12:xx Berlin (T0's hour) most days: their digest is due at the next scan.
    engine.ingest([Event(user_id="coffee0", item_id="beans", type="view", timestamp=T0 - d * 86_400 + 120)
                   for d in range(1, 7)])
    clock.advance(60)
    push.step()
    assert not [n for n in all_notifications(push) if n.type == "digest"]  # scanned at start, not yet again
    clock.advance(600)
    push.step()
    digests = [n for n in all_notifications(push) if n.type == "digest" and n.user_id == "coffee0"]
    assert len(digests) == 1 and len(digests[0].items) == 3 and digests[0].title == "Picked for you today"
    clock.advance(700)  # the next scan, the same local day
    push.step()
    assert len([n for n in all_notifications(push) if n.type == "digest" and n.user_id == "coffee0"]) == 1
    push.set_preferences("tea0", PushPreferences(types={"digest": False}))
    assert not [n for n in all_notifications(push) if n.user_id == "tea0" and n.type == "digest"
                and n.status == "scheduled"]
    push.close()
    engine.close()


def test_feedback_records_the_outcome_and_an_event(shop: tuple[Engine, PushService]) -> None:
    engine, push = shop
    push.create_campaign(CampaignRequest(id="fb", item_id="green-tea", audience={"user_ids": ["coffee4"]}))
    push.step()
    (row,) = push.notifications("coffee4", None, 10)
    from kairos.push.service import NotDelivered

    with pytest.raises(NotDelivered):
        push.feedback(row.notification_id, "clicked")
    push.db.query("UPDATE push_notifications SET status = 'delivered', delivered_at = ? WHERE id = ?",
                  (T0, row.notification_id))
    events_before = engine.stats()["events"]
    clicked = push.feedback(row.notification_id, "clicked")
    assert clicked is not None and clicked.clicked_at == T0 and clicked.opened_at == T0
    assert push.feedback(row.notification_id, "clicked") is not None  # again: no second event
    assert engine.stats()["events"] == events_before + 1
    last = engine.get_user("coffee4").recent[0]
    assert (last.item_id, str(last.type)) == ("green-tea", "push_click")
    assert "green-tea" not in [i.item_id for i in engine.recommend("coffee4", 10).items]  # a click: now seen
    assert push.feedback("no-such-id", "opened") is None


def test_a_forgotten_user_leaves_no_push_state(shop: tuple[Engine, PushService]) -> None:
    engine, push = shop
    push.set_preferences("coffee5", PushPreferences(max_per_day=1))
    push.create_campaign(CampaignRequest(id="f", item_id="teapot", audience={"user_ids": ["coffee5"]}))
    push.step()
    assert push.notifications("coffee5", None, 10)
    engine.forget_user("coffee5")
    assert not push.notifications("coffee5", None, 10)
    assert not push.preferences.get("coffee5").customised


def test_one_matrix_product_equals_scoring_each_user_alone(shop: tuple[Engine, PushService]) -> None:
    """The batched semantic and co-visitation features equal the per-user computation."""
    engine, push = shop
    push.vectors.refresh()
    key = engine.catalog.index["beans"]
    rows = np.arange(len(push.vectors))
    features = push.targeter.features(key, rows)
    vector = engine.semantic.item_vector(key)
    covisit = engine.sources["covisit"]
    for row, user_id in enumerate(push.vectors.ids):
        profile = engine.semantic.profile(user_id)
        assert features[row, 2] == pytest.approx(float(profile @ vector), abs=1e-5)
        ctx = engine.user_context(user_id, exclude_seen=False)
        found = covisit.candidates(ctx, 100)
        score = dict(zip(found.items.tolist(), found.scores.tolist(), strict=True)).get(key, 0.0)
        assert features[row, 4] == pytest.approx(np.log(score + 1e-4), abs=1e-5)
