"""The small shop, tried as a new user would, against a real server: a few dozen items
in themes, a handful of users whose purchases made a few items popular. Two events in
one theme must fill the top 3 with that theme, and a matching item upserted a moment
later must reach the top 3 within a second."""

from __future__ import annotations

import time
from typing import Any

THEMES: dict[str, list[tuple[str, str]]] = {
    "coffee": [
        ("Espresso machine", "Pump espresso machine with a steam wand for cappuccino and latte."),
        ("Burr coffee grinder", "Conical burr grinder for espresso and filter coffee beans."),
        ("Espresso coffee beans", "Dark roast arabica coffee beans for espresso."),
        ("Milk frothing jug", "Stainless steel pitcher for steaming milk for latte art."),
        ("Coffee tamper", "Stainless steel tamper to press ground coffee in the portafilter."),
        ("Moka pot", "Stovetop espresso coffee maker, six cups."),
        ("French press", "Glass cafetiere for brewing coarse ground coffee."),
        ("Coffee scale", "Digital scale with timer for weighing coffee and water."),
        ("Cold brew coffee maker", "Pitcher for brewing coffee cold overnight."),
        ("Espresso cups", "Set of four porcelain espresso cups with saucers."),
    ],
    "tea": [
        ("Teapot", "Ceramic teapot with an infuser for loose leaf tea."),
        ("Green tea", "Japanese sencha loose leaf green tea."),
        ("Tea kettle", "Electric kettle with temperature settings for tea."),
        ("Matcha whisk", "Bamboo whisk for preparing matcha tea."),
        ("Earl Grey tea", "Black tea with bergamot, loose leaf."),
        ("Tea cups", "Set of porcelain tea cups."),
        ("Herbal tea sampler", "Chamomile, mint and rooibos herbal teas."),
        ("Tea strainer", "Fine mesh strainer for loose leaf tea."),
        ("Chai spice tea", "Spiced black tea with cinnamon and cardamom."),
        ("Iced tea pitcher", "Glass pitcher for brewing iced tea."),
    ],
    "fitness": [
        ("Yoga mat", "Non-slip exercise mat for yoga and pilates."),
        ("Dumbbells", "Pair of adjustable dumbbells for strength training at home."),
        ("Resistance bands", "Set of elastic bands for workouts and stretching."),
        ("Kettlebell", "Cast iron kettlebell for swings and strength workouts."),
        ("Foam roller", "Roller for muscle recovery after exercise."),
        ("Jump rope", "Speed skipping rope for cardio workouts."),
        ("Pull-up bar", "Doorway bar for pull-ups and chin-ups."),
        ("Exercise ball", "Stability ball for core training."),
        ("Workout gloves", "Padded gloves for weight lifting."),
        ("Ab roller", "Wheel for abdominal core workouts."),
    ],
    "garden": [
        ("Garden hose", "Expandable hose for watering the garden."),
        ("Pruning shears", "Bypass secateurs for cutting branches and roses."),
        ("Watering can", "Galvanised watering can for plants."),
        ("Flower seeds", "Mixed wildflower seeds for the garden."),
        ("Garden gloves", "Thorn-proof gloves for gardening."),
        ("Plant pots", "Set of terracotta pots for plants."),
        ("Compost bin", "Bin for composting garden and kitchen waste."),
        ("Garden trowel", "Hand trowel for planting and digging."),
        ("Bird feeder", "Hanging feeder for garden birds."),
        ("Lawn sprinkler", "Oscillating sprinkler for watering the lawn."),
    ],
}


def item_id(theme: str, i: int) -> str:
    return f"{theme}-{i}"


def top(client: Any, user: str, n: int = 3) -> list[str]:
    response = client.get(f"/v1/recommendations/{user}", params={"n": n})
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


def test_a_small_shop_follows_the_users_latest_actions(server_factory: Any) -> None:
    server = server_factory()
    with server.client() as client:
        items = [{"item_id": item_id(theme, i), "title": title, "text": text, "categories": [theme]}
                 for theme, rows in THEMES.items() for i, (title, text) in enumerate(rows)]
        assert client.post("/v1/items", json={"items": items}).status_code == 200
        # A handful of users: each bought in their own theme, and nearly everyone bought the
        # shop's best sellers (a teapot, a yoga mat, dumbbells) along the way.
        events = []
        best_sellers = [item_id("tea", 0), item_id("fitness", 0), item_id("fitness", 1)]
        for u, theme in enumerate(["coffee", "tea", "fitness", "garden", "coffee", "fitness", "garden", "tea"]):
            own = [item_id(theme, (u + k) % 10) for k in range(3)]
            for step, item in enumerate([own[0], *best_sellers, *own[1:]]):
                events.append({"user_id": f"regular{u}", "item_id": item, "type": "purchase",
                               "timestamp": 1_700_000_000 + 1000 * u + step})
        assert client.post("/v1/events", json={"events": events}).status_code == 200

        # A new user buys an espresso machine and clicks a coffee grinder.
        new = [{"user_id": "newcomer", "item_id": item_id("coffee", 0), "type": "purchase"},
               {"user_id": "newcomer", "item_id": item_id("coffee", 1), "type": "click"}]
        assert client.post("/v1/events", json={"events": new}).status_code == 200
        shown = top(client, "newcomer")
        assert sum(item.startswith("coffee-") for item in shown) >= 2, shown

        # A new coffee item arrives: within a second it is in the newcomer's top 3.
        arrival = {"title": "Espresso knock box",
                   "text": "Box for knocking out used espresso coffee grounds from the portafilter.",
                   "categories": ["coffee"]}
        assert client.put("/v1/items/coffee-new", json=arrival).status_code == 200
        deadline = time.monotonic() + 1.0
        while "coffee-new" not in (shown := top(client, "newcomer")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "coffee-new" in shown, shown
        assert sum(item.startswith("coffee-") for item in shown) >= 2, shown
