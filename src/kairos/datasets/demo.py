"""A deterministic synthetic shop: readable catalogue, users with tastes, and behaviour.

The behaviour has patterns a recommender can learn and a test can check: users stay in
the categories they like, popular items are picked more (Zipf), and each item has 1-3
"follow-ups" (tent -> sleeping bag -> headlamp) that the next visit goes to about half
the time. Same config, same seed: the very same items, users and events.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np

from kairos.progress import progress
from kairos.schema import Event, EventType, Item, User

if TYPE_CHECKING:
    from kairos.engine import Engine

DAY = 86_400.0
HOUR = 3_600.0


@dataclass(frozen=True)
class Category:
    """Vocabulary of one category. `nouns` are in shopping-journey order: the follow-ups
    of an item are items of the next noun (a tent leads to a sleeping bag)."""

    name: str
    nouns: tuple[str, ...]
    adjectives: tuple[str, ...]
    features: tuple[str, ...]
    uses: tuple[str, ...]
    brands: tuple[str, ...]
    interests: tuple[str, ...]
    related: str
    price: tuple[float, float]


CATEGORIES: tuple[Category, ...] = (
    Category(
        "running",
        ("trail running shoes", "running socks", "hydration vest", "running shorts",
         "GPS running watch", "foam roller", "energy gels"),
        ("lightweight", "cushioned", "breathable", "grippy", "race-day", "everyday"),
        ("a rock plate", "quick-dry mesh", "reflective details", "a secure heel lock",
         "recycled materials", "a wide toe box"),
        ("muddy trails", "long road runs", "interval sessions", "your first marathon"),
        ("Stridewell", "Ridgeline Run", "Pacemark", "Kinetic"),
        ("trail running", "running marathons", "early morning runs"),
        "cycling", (15.0, 180.0),
    ),
    Category(
        "hiking",
        ("2-person tent", "sleeping bag", "sleeping pad", "headlamp", "trekking poles",
         "hiking backpack", "water filter"),
        ("ultralight", "rugged", "weatherproof", "compact", "four-season", "packable"),
        ("taped seams", "a two-way zip", "a 10-year warranty", "a stuff sack",
         "aluminium poles", "a rechargeable battery"),
        ("weekend backpacking", "alpine trips", "wild camping", "thru-hikes"),
        ("Northpeak", "Cairn & Co", "Timberline", "Ascent Gear"),
        ("hiking", "camping in the mountains", "long-distance trails"),
        "photography", (12.0, 450.0),
    ),
    Category(
        "kitchen",
        ("chef's knife", "cutting board", "knife sharpener", "cast-iron skillet", "dutch oven",
         "spice rack", "apron"),
        ("professional", "hand-forged", "non-stick", "heavy-duty", "minimalist", "classic"),
        ("a full-tang handle", "dishwasher-safe parts", "pre-seasoned cast iron",
         "end-grain wood", "a lifetime guarantee", "an ergonomic grip"),
        ("weeknight dinners", "slow Sunday cooking", "meal prep", "cooking for friends"),
        ("Forge & Fig", "Casa Cucina", "Ironleaf", "Kitchenry"),
        ("cooking", "trying new recipes", "hosting dinner parties"),
        "baking", (9.0, 260.0),
    ),
    Category(
        "coffee",
        ("coffee grinder", "pour-over dripper", "paper filters", "gooseneck kettle",
         "espresso beans", "milk frother", "coffee scale"),
        ("burr", "single-origin", "precision", "barista-grade", "compact", "artisan"),
        ("40 grind settings", "temperature control", "a built-in timer", "fair-trade beans",
         "a ceramic cone", "fast heat-up"),
        ("your morning ritual", "the perfect flat white", "slow weekend brews", "the office"),
        ("Bean Theory", "Roastwell", "Crema Lab", "Drip & Draw"),
        ("good coffee", "specialty espresso", "pour-over brewing"),
        "kitchen", (8.0, 320.0),
    ),
    Category(
        "books/sci-fi",
        ("space opera novel", "sequel", "third volume", "companion anthology",
         "illustrated edition", "box set"),
        ("award-winning", "bestselling", "mind-bending", "epic", "cult-classic", "debut"),
        ("a galaxy-spanning plot", "a rogue AI", "first contact", "time travel",
         "a generation ship", "an unreliable narrator"),
        ("long train rides", "rainy weekends", "book clubs", "late-night reading"),
        ("Orbit House", "Nebula Press", "Farside Books", "Quasar"),
        ("science fiction", "space opera", "reading on the train"),
        "board-games", (6.0, 60.0),
    ),
    Category(
        "electronics/audio",
        ("wireless earbuds", "charging case", "bluetooth speaker", "over-ear headphones",
         "headphone stand", "USB-C DAC"),
        ("noise-cancelling", "hi-fi", "waterproof", "studio", "portable", "low-latency"),
        ("30-hour battery life", "active noise cancelling", "multipoint pairing",
         "an IPX7 rating", "a USB-C port", "a warm, detailed sound"),
        ("the commute", "working from home", "workouts", "vinyl nights"),
        ("Sonora", "Wavecraft", "Aurion", "Decibel Labs"),
        ("music", "hi-fi audio", "podcasts on the go"),
        "photography", (19.0, 400.0),
    ),
    Category(
        "gardening",
        ("seed starter kit", "potting soil", "raised garden bed", "watering can",
         "pruning shears", "garden gloves", "compost bin"),
        ("organic", "self-watering", "heavy-duty", "eco-friendly", "heirloom", "compact"),
        ("untreated cedar", "peat-free soil", "a sharp bypass blade", "UV-stable plastic",
         "60 heirloom seeds", "reinforced fingertips"),
        ("balcony gardens", "vegetable patches", "spring planting", "beginners"),
        ("Greenthumb", "Rootstock", "Bloomfield", "Verdant"),
        ("gardening", "growing my own vegetables", "houseplants"),
        "kitchen", (5.0, 200.0),
    ),
    Category(
        "yoga",
        ("yoga mat", "yoga blocks", "yoga strap", "meditation cushion", "yoga wheel",
         "mat cleaner"),
        ("non-slip", "eco", "extra-thick", "travel", "cork", "supportive"),
        ("natural rubber", "alignment lines", "a carry strap", "buckwheat filling",
         "a sweat-proof finish", "a washable cover"),
        ("hot yoga", "morning stretches", "meditation", "studio classes"),
        ("Lotus Lane", "Prana Works", "Still Point", "Asana"),
        ("yoga", "meditation", "mindful mornings"),
        "running", (8.0, 120.0),
    ),
    Category(
        "cycling",
        ("road bike helmet", "cycling gloves", "bike light set", "saddle bag", "mini pump",
         "cycling jersey"),
        ("aero", "ventilated", "commuter", "high-visibility", "carbon", "gravel-ready"),
        ("MIPS protection", "USB-rechargeable lights", "gel padding", "a reflective trim",
         "a CO2 adapter", "a full-length zip"),
        ("the daily commute", "gravel adventures", "group rides", "night riding"),
        ("Velo Nord", "Spokewise", "Cadence", "Crankset"),
        ("cycling", "gravel riding", "bike commuting"),
        "running", (10.0, 220.0),
    ),
    Category(
        "photography",
        ("mirrorless camera", "prime lens", "camera strap", "SD card", "tripod",
         "camera bag"),
        ("full-frame", "weather-sealed", "fast", "travel", "professional", "compact"),
        ("in-body stabilisation", "an f/1.8 aperture", "4K video", "quick-release plates",
         "a padded insert", "V90 write speeds"),
        ("street photography", "landscapes", "travel vlogs", "portraits"),
        ("Lumen", "Aperture & Co", "Focal", "Shutterline"),
        ("photography", "landscape photos", "street photography"),
        "electronics/audio", (15.0, 1500.0),
    ),
    Category(
        "board-games",
        ("strategy board game", "expansion pack", "card sleeves", "dice set",
         "game organizer", "cooperative board game"),
        ("family", "competitive", "party", "legacy", "two-player", "deluxe"),
        ("60-minute games", "beautiful artwork", "a solo mode", "metal coins",
         "simple rules", "endless replayability"),
        ("game nights", "family evenings", "rainy days", "two-player duels"),
        ("Meeple Works", "Tabletop Guild", "Rolling Dice", "Boardroom"),
        ("board games", "game nights with friends", "strategy games"),
        "books/sci-fi", (7.0, 110.0),
    ),
    Category(
        "baking",
        ("stand mixer", "mixing bowls", "silicone baking mat", "loaf pan",
         "sourdough starter kit", "cooling rack"),
        ("professional", "non-stick", "nesting", "stainless", "artisan", "heritage"),
        ("a 5-litre bowl", "oven-safe materials", "a banneton basket", "10 speed settings",
         "a non-slip base", "easy-release coating"),
        ("weekend sourdough", "birthday cakes", "holiday cookies", "beginners"),
        ("Crumb & Co", "Hearth", "Flourish", "Proof"),
        ("baking bread", "sourdough", "making cakes"),
        "kitchen", (6.0, 480.0),
    ),
)
CATEGORY_INDEX = {category.name: i for i, category in enumerate(CATEGORIES)}

COUNTRIES = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "SE", "JP", "BR", "CA", "AU")
COUNTRY_WEIGHTS = np.array([20, 10, 10, 8, 6, 6, 4, 3, 8, 6, 5, 4], dtype=np.float64)
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55+")
AGE_WEIGHTS = np.array([18, 32, 25, 15, 10], dtype=np.float64)
VARIANTS = ("graphite", "forest green", "sand", "midnight blue", "v2", "pro", "mini", "XL")

# Event-type codes of the compact arrays; row order is a step's event order.
_TYPES = (EventType.view, EventType.click, EventType.like, EventType.cart,
          EventType.purchase, EventType.rating, EventType.skip, EventType.dislike)
_VIEW, _CLICK, _LIKE, _CART, _PURCHASE, _RATING, _SKIP, _DISLIKE = range(8)
# Seconds after a step's first event at which each funnel event happens.
_STEP_OFFSETS = np.array([0.0, 8.0, 20.0, 40.0, 70.0, 90.0])


@dataclass
class DemoConfig:
    """How much to generate. `start` is fixed so a seed means the same data forever."""

    n_users: int = 500
    n_items: int = 600
    n_events: int = 50_000
    seed: int = 7
    start: float = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
    days: float = 60.0
    follow_probability: float = 0.5
    explore_probability: float = 0.08
    new_item_share: float = 0.3

    @property
    def end(self) -> float:
        return self.start + self.days * DAY


@dataclass
class DemoData:
    """The generated shop. Events are held as compact arrays in global time order and
    become `Event` objects only batch by batch."""

    config: DemoConfig
    items: list[Item]
    users: list[User]
    follow_ups: dict[str, tuple[str, ...]]
    event_user: np.ndarray = field(repr=False)
    event_item: np.ndarray = field(repr=False)
    event_type: np.ndarray = field(repr=False)
    event_time: np.ndarray = field(repr=False)
    event_value: np.ndarray = field(repr=False)

    @property
    def n_events(self) -> int:
        return len(self.event_time)

    def iter_event_batches(
        self, batch_size: int = 10_000, start: int = 0, stop: int | None = None
    ) -> Iterator[list[Event]]:
        """Events [start:stop] sorted by timestamp, `batch_size` at a time."""
        stop = self.n_events if stop is None else min(stop, self.n_events)
        user_ids = [user.user_id for user in self.users]
        item_ids = [item.item_id for item in self.items]
        for lo in range(start, stop, batch_size):
            hi = min(lo + batch_size, stop)
            users = self.event_user[lo:hi].tolist()
            items = self.event_item[lo:hi].tolist()
            types = self.event_type[lo:hi].tolist()
            times = self.event_time[lo:hi].tolist()
            values = self.event_value[lo:hi].tolist()
            yield [
                Event(
                    user_id=user_ids[u], item_id=item_ids[i], type=_TYPES[t], timestamp=ts,
                    value=v if t == _RATING else None,
                )
                for u, i, t, ts, v in zip(users, items, types, times, values, strict=True)
            ]


@dataclass
class DemoReport:
    items: int
    users: int
    events: int
    generate_seconds: float
    import_seconds: float

    def __str__(self) -> str:
        rate = self.events / self.import_seconds if self.import_seconds > 0 else 0.0
        return (f"{self.items:,} items, {self.users:,} users, {self.events:,} events "
                f"(generated in {self.generate_seconds:.1f}s, imported in "
                f"{self.import_seconds:.1f}s, {rate:,.0f} events/s)")


def generate_demo(config: DemoConfig | None = None) -> DemoData:
    """Build the catalogue, users and behaviour of `config` (deterministic by seed)."""
    config = config or DemoConfig()
    if config.n_items < 1 or config.n_users < 1 or config.n_events < 0:
        raise ValueError("a demo needs at least one item and one user")
    rng = np.random.default_rng(config.seed)
    catalogue = _Catalogue.generate(rng, config)
    tastes = _Tastes.generate(rng, config)
    events = _behaviour(rng, config, catalogue, tastes)
    item_ids = [item.item_id for item in catalogue.items]
    return DemoData(
        config=config,
        items=catalogue.items,
        users=tastes.users,
        follow_ups={
            item_ids[i]: tuple(item_ids[j] for j in targets)
            for i, targets in enumerate(catalogue.follow_ups)
        },
        **events,
    )


def import_demo(engine: Engine, config: DemoConfig | None = None, quiet: bool = False) -> DemoReport:
    """Generate the demo and load it through the engine, as any client's data would be."""
    started = time.perf_counter()
    data = generate_demo(config)
    report = import_demo_data(engine, data, quiet=quiet)
    report.generate_seconds = time.perf_counter() - started - report.import_seconds
    return report


def import_demo_data(
    engine: Engine, data: DemoData, stop: int | None = None, quiet: bool = False
) -> DemoReport:
    """Load generated data (events up to `stop`; the rest can be sent later, as new)."""
    started = time.perf_counter()
    for lo in range(0, len(data.items), 5_000):
        engine.upsert_items(data.items[lo:lo + 5_000])
    for user in data.users:
        engine.upsert_user(user)
    stop = data.n_events if stop is None else min(stop, data.n_events)
    with progress("importing demo events", stop, quiet=quiet) as advance:
        for batch in data.iter_event_batches(stop=stop):
            advance(engine.ingest(batch))
    return DemoReport(len(data.items), len(data.users), stop, 0.0,
                      time.perf_counter() - started)


def _id_width(count: int) -> int:
    return max(5, len(str(count)))


@dataclass
class _Catalogue:
    items: list[Item]
    category: np.ndarray  # main category per item
    created_at: np.ndarray
    follow_ups: list[tuple[int, ...]]
    # Per category: its items sorted by creation, their creation times and the
    # cumulative Zipf popularity, so "a popular item that exists at t" is two bisections.
    by_category: list[np.ndarray]
    created_sorted: list[np.ndarray]
    cumulative_weight: list[np.ndarray]

    @classmethod
    def generate(cls, rng: np.random.Generator, config: DemoConfig) -> _Catalogue:
        n = config.n_items
        n_cat = len(CATEGORIES)
        share = rng.dirichlet(np.full(n_cat, 8.0))
        category = np.sort(rng.choice(n_cat, size=n, p=share))
        category[:min(n, n_cat)] = np.arange(min(n, n_cat))
        category = rng.permutation(category)
        noun = np.array([rng.integers(len(CATEGORIES[c].nouns)) for c in category], dtype=np.int64)
        popularity = 1.0 / (1.0 + rng.permutation(n)) ** 0.9
        late = rng.random(n) < config.new_item_share
        created_at = np.where(
            late,
            config.start + rng.random(n) * config.days * DAY * 0.9,
            config.start - rng.random(n) * 90 * DAY,
        )
        # The most popular item of each category exists from the start.
        for c in range(n_cat):
            members = np.flatnonzero(category == c)
            if len(members):
                first = members[np.argmax(popularity[members])]
                created_at[first] = min(created_at[first], config.start - DAY)
        created_at = np.round(created_at)

        width = _id_width(n)
        items: list[Item] = []
        for i in range(n):
            spec = CATEGORIES[category[i]]
            adjective = spec.adjectives[rng.integers(len(spec.adjectives))]
            title = f"{adjective.capitalize()} {spec.nouns[noun[i]]}"
            if rng.random() < 0.4:
                title += f" ({VARIANTS[rng.integers(len(VARIANTS))]})"
            brand = spec.brands[rng.integers(len(spec.brands))]
            first, second = rng.choice(len(spec.features), size=2, replace=False)
            use = spec.uses[rng.integers(len(spec.uses))]
            text = (f"{adjective.capitalize()} {spec.nouns[noun[i]]} from {brand} with "
                    f"{spec.features[first]} and {spec.features[second]}. Made for {use}.")
            categories = [spec.name]
            if rng.random() < 0.25:
                categories.append(spec.related)
            low, high = spec.price
            price = round(float(np.exp(rng.uniform(np.log(low), np.log(high)))) - 0.01, 2)
            items.append(Item(
                item_id=f"item-{i:0{width}d}", title=title, text=text, categories=categories,
                attributes={"price": max(price, 0.99), "brand": brand},
                created_at=float(created_at[i]),
            ))

        follow_ups: list[tuple[int, ...]] = []
        members_of = [np.flatnonzero(category == c) for c in range(n_cat)]
        by_noun: dict[tuple[int, int], np.ndarray] = {}  # (category, noun) -> items, built once
        for c, members in enumerate(members_of):
            for value in np.unique(noun[members]):
                by_noun[(c, int(value))] = members[noun[members] == value]
        empty = np.empty(0, dtype=np.int64)
        for i in range(n):
            members = members_of[category[i]]
            nouns = len(CATEGORIES[category[i]].nouns)
            following = by_noun.get((int(category[i]), int((noun[i] + 1) % nouns)), empty)
            pool = following[following != i]
            if len(pool) == 0:
                pool = members[members != i]
            if len(pool) == 0:
                pool = np.delete(np.arange(n), i)
            k = min(len(pool), int(rng.integers(1, 4)))
            follow_ups.append(tuple(int(j) for j in rng.choice(pool, size=k, replace=False)))

        by_category, created_sorted, cumulative = [], [], []
        for members in members_of:
            order = members[np.argsort(created_at[members], kind="stable")]
            by_category.append(order)
            created_sorted.append(created_at[order])
            cumulative.append(np.cumsum(popularity[order]))
        return cls(items, category, created_at, follow_ups, by_category, created_sorted,
                   cumulative)

    def pick(self, categories: np.ndarray, times: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        """Per step, a popularity-weighted item of its category created by its time
        (-1 where the category has none yet)."""
        picked = np.full(len(categories), -1, dtype=np.int64)
        for c in range(len(CATEGORIES)):
            steps = np.flatnonzero(categories == c)
            if len(steps) == 0 or len(self.by_category[c]) == 0:
                continue
            exist = np.searchsorted(self.created_sorted[c], times[steps], side="right")
            ok = exist > 0
            cumulative = self.cumulative_weight[c]
            target = uniforms[steps[ok]] * cumulative[exist[ok] - 1]
            position = np.minimum(np.searchsorted(cumulative, target, side="right"), exist[ok] - 1)
            picked[steps[ok]] = self.by_category[c][position]
        return picked


@dataclass
class _Tastes:
    users: list[User]
    weights: np.ndarray  # (users, categories): how often each user shops in each
    activity: np.ndarray
    joined: np.ndarray

    @classmethod
    def generate(cls, rng: np.random.Generator, config: DemoConfig) -> _Tastes:
        n_cat = len(CATEGORIES)
        n = config.n_users
        weights = np.zeros((n, n_cat))
        width = _id_width(n)
        users: list[User] = []
        templates = ("I love {a} and {b}.", "Mostly into {a}; lately also {b}.",
                     "Big fan of {a}, and {b} at weekends.")
        country_p = COUNTRY_WEIGHTS / COUNTRY_WEIGHTS.sum()
        age_p = AGE_WEIGHTS / AGE_WEIGHTS.sum()
        for u in range(n):
            liked = rng.choice(n_cat, size=int(rng.integers(1, 4)), replace=False)
            weights[u, liked] = rng.dirichlet(np.full(len(liked), 2.0))
            ranked = liked[np.argsort(-weights[u, liked])]
            phrases = [CATEGORIES[c].interests[rng.integers(len(CATEGORIES[c].interests))]
                       for c in ranked]
            if len(phrases) == 1:
                text = f"I'm really into {phrases[0]}."
            else:
                text = templates[rng.integers(len(templates))].format(a=phrases[0], b=phrases[1])
            users.append(User(
                user_id=f"user-{u:0{width}d}",
                attributes={
                    "country": COUNTRIES[rng.choice(len(COUNTRIES), p=country_p)],
                    "age_band": AGE_BANDS[rng.choice(len(AGE_BANDS), p=age_p)],
                },
                text=text,
            ))
        activity = rng.lognormal(0.0, 1.0, size=n)
        joined = config.start + rng.random(n) ** 2 * 0.5 * config.days * DAY
        return cls(users, weights, activity, joined)


def _behaviour(
    rng: np.random.Generator, config: DemoConfig, catalogue: _Catalogue, tastes: _Tastes
) -> dict[str, np.ndarray]:
    """Sessions of funnels, per user, then one global sort by time."""
    n_users, n_cat = tastes.weights.shape
    total = config.n_events
    base = 1 if total >= n_users else 0  # everyone active when there are enough events
    budgets = base + rng.multinomial(total - base * n_users, tastes.activity / tastes.activity.sum())

    step_user: list[np.ndarray] = []
    step_time: list[np.ndarray] = []
    step_category: list[np.ndarray] = []
    step_explore: list[np.ndarray] = []
    event_step: list[np.ndarray] = []
    event_type: list[np.ndarray] = []
    event_time: list[np.ndarray] = []
    steps_so_far = 0
    for u in range(n_users):
        budget = int(budgets[u])
        if budget == 0:
            continue
        m = budget  # at least one event per step: enough steps for any funnel
        explore = rng.random(m) < config.explore_probability
        draws = rng.random((m, 5))
        present = np.zeros((m, 6), dtype=bool)
        present[:, _VIEW] = True
        present[:, _CLICK] = draws[:, 0] < 0.45
        present[:, _LIKE] = present[:, _CLICK] & (draws[:, 1] < 0.12)
        present[:, _CART] = present[:, _CLICK] & (draws[:, 2] < 0.3)
        present[:, _PURCHASE] = present[:, _CART] & (draws[:, 3] < 0.5)
        present[:, _RATING] = present[:, _CLICK] & (draws[:, 4] < 0.08)
        present[explore, 1:] = False
        ends = np.cumsum(present.sum(axis=1))
        n_steps = int(np.searchsorted(ends, budget)) + 1
        present = present[:n_steps]
        explore = explore[:n_steps]
        keep = budget - (int(ends[n_steps - 2]) if n_steps > 1 else 0)
        last = np.flatnonzero(present[-1])
        present[-1, last[keep:]] = False

        sizes = rng.geometric(0.2, size=n_steps)
        session_of = np.repeat(np.arange(n_steps), sizes)[:n_steps]
        n_sessions = int(session_of[-1]) + 1
        within = np.minimum(rng.exponential(45.0, size=n_steps) + 100.0, 300.0)
        first_step = np.searchsorted(session_of, np.arange(n_sessions))
        within[first_step] = 0.0
        cumulative = np.cumsum(within)
        offsets = cumulative - cumulative[first_step][session_of]
        last_step = np.r_[first_step[1:] - 1, n_steps - 1]
        spacing = offsets[last_step] + 100.0 + 10 * 60.0
        window = config.end - HOUR - tastes.joined[u]
        if spacing.sum() > 0.9 * window:
            factor = 0.9 * window / spacing.sum()
            offsets *= factor
            spacing *= factor
        slack = window - spacing.sum()
        starts = (tastes.joined[u] + np.sort(rng.random(n_sessions)) * slack
                  + np.r_[0.0, np.cumsum(spacing)[:-1]])
        times = starts[session_of] + offsets

        liked = tastes.weights[u]
        category = rng.choice(n_cat, size=n_steps, p=liked)
        if explore.any():
            others = np.flatnonzero(liked == 0)
            category[explore] = rng.choice(others if len(others) else np.arange(n_cat),
                                           size=int(explore.sum()))

        rows, cols = np.nonzero(present)
        types = cols.copy()
        explore_rows = explore[rows]
        types[explore_rows] = np.where(rng.random(int(explore_rows.sum())) < 0.7, _SKIP, _DISLIKE)
        ev_times = times[rows] + _STEP_OFFSETS[cols] + rng.random(len(rows)) * 5.0
        ev_times = np.round(ev_times, 3)
        steps_up = np.arange(len(ev_times)) * 1e-3
        ev_times = np.maximum.accumulate(ev_times - steps_up) + steps_up

        step_user.append(np.full(n_steps, u, dtype=np.int32))
        step_time.append(times)
        step_category.append(category)
        step_explore.append(explore)
        event_step.append(rows + steps_so_far)
        event_type.append(types.astype(np.int8))
        event_time.append(ev_times)
        steps_so_far += n_steps

    if steps_so_far == 0:
        empty = np.empty(0)
        return dict(event_user=empty.astype(np.int32), event_item=empty.astype(np.int32),
                    event_type=empty.astype(np.int8), event_time=empty,
                    event_value=empty.astype(np.float32))

    users = np.concatenate(step_user)
    times = np.concatenate(step_time)
    categories = np.concatenate(step_category)
    explore = np.concatenate(step_explore)
    picked = catalogue.pick(categories, times, rng.random(len(times)))
    items = _follow(rng, config, catalogue, users, times, explore, picked)

    steps = np.concatenate(event_step)
    types = np.concatenate(event_type)
    ev_time = np.concatenate(event_time)
    ev_user = users[steps]
    ev_item = items[steps].astype(np.int32)
    values = np.clip(np.round(rng.normal(4.1, 0.9, size=len(steps))), 1, 5).astype(np.float32)
    order = np.lexsort((np.arange(len(steps)), ev_user, ev_time))
    return dict(
        event_user=ev_user[order], event_item=ev_item[order], event_type=types[order],
        event_time=ev_time[order], event_value=values[order],
    )


def _follow(
    rng: np.random.Generator,
    config: DemoConfig,
    catalogue: _Catalogue,
    users: np.ndarray,
    times: np.ndarray,
    explore: np.ndarray,
    picked: np.ndarray,
) -> np.ndarray:
    """The one sequential part: a step goes to a follow-up of the user's previous item
    with `follow_probability`, else to its taste pick (or, where its category has no
    item yet, the oldest item)."""
    n = len(times)
    follow = (rng.random(n) < config.follow_probability).tolist()
    choice = rng.random(n).tolist()
    follow_ups = catalogue.follow_ups
    created = catalogue.created_at.tolist()
    user_list = users.tolist()
    time_list = times.tolist()
    explore_list = explore.tolist()
    picked_list = picked.tolist()
    oldest = int(np.argmin(catalogue.created_at))
    out = [0] * n
    previous = -1
    current_user = -1
    for s in range(n):
        if user_list[s] != current_user:
            current_user = user_list[s]
            previous = -1
        item = picked_list[s]
        if explore_list[s]:
            out[s] = item if item >= 0 else oldest
            continue
        targets = follow_ups[previous] if previous >= 0 else ()
        if follow[s] and targets:
            # 1st follow-up most likely, then 2nd, then 3rd.
            r = choice[s]
            candidate = targets[0 if r < 0.6 or len(targets) == 1 else
                                1 if r < 0.9 or len(targets) == 2 else 2]
            if created[candidate] <= time_list[s]:
                item = candidate
        if item < 0:
            item = oldest
        out[s] = item
        previous = item
    return np.array(out, dtype=np.int64)


__all__ = [
    "CATEGORIES", "DemoConfig", "DemoData", "DemoReport", "generate_demo", "import_demo",
    "import_demo_data",
]
