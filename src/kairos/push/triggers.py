"""Triggers: what makes Kairos consider a notification, and who it is for.

Detection is durable by construction: item changes are diffed against push's own
snapshot of every item (`push_items`: availability, price), and events are read from
the durable log after push's cursor, each in one transaction with the trigger rows
they produce. A crash between the engine's write and push's reading only delays the
trigger; replaying the same upsert or event finds no new difference or the same
trigger key, so it creates nothing twice.

    item_created    new items nobody has engaged with yet   -> users likeliest to engage (each: the best one)
    back_in_stock   available false -> true                 -> users who viewed or carted it, no purchase
    price_drop      its price fell by >= min_drop            -> the same users
    cart_abandoned  a cart with no purchase after after_s    -> that user (+ a complementary item)
    next_best       a user left the site (session_gap_s)     -> their top recommendation, if p >= min_p
    digest          once a day at the user's best hour      -> their top-n list
    campaign        POST /v1/push/campaigns                 -> the audience rule's users
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kairos.push.config import Triggers
from kairos.push.database import Connection, PushDatabase, dumps
from kairos.store.base import EventRecord, ItemRecord

PURCHASE = "purchase"
CART = "cart"
INTEREST_TYPES = frozenset({"view", "click", "like", "cart", "share"})  # back-in-stock / price-drop audience


@dataclass(slots=True)
class Trigger:
    kind: str
    key: str  # (kind, key) is unique: the idempotency of detection
    received_at: float
    due_at: float
    payload: dict[str, Any] = field(default_factory=dict)
    id: int | None = None


def without_user(value: Any, user_id: str) -> Any:
    """`value` (decoded JSON) with the user's id taken out of every list that holds it."""
    if isinstance(value, dict):
        return {key: without_user(item, user_id) for key, item in value.items()}
    if isinstance(value, list):
        return [without_user(item, user_id) for item in value if item != user_id]
    return value


class TriggerQueue:
    """Trigger rows: pending until the decider turns them into notifications (or nothing)."""

    def __init__(self, db: PushDatabase) -> None:
        self.db = db

    @staticmethod
    def add(db: Connection, triggers: Iterable[Trigger]) -> int:
        """Insert inside the caller's transaction; a (kind, key) seen before is ignored."""
        return db.executemany("INSERT INTO push_triggers (kind, key, payload, received_at, due_at) "
                              "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                              [(t.kind, t.key, dumps(t.payload), t.received_at, t.due_at) for t in triggers]).rowcount

    @staticmethod
    def rearm(db: Connection, triggers: Iterable[Trigger]) -> None:
        """Insert, or move an existing one's due time and make it pending again (timers:
        each event of a user pushes their next-best check back)."""
        db.executemany("INSERT INTO push_triggers (kind, key, payload, received_at, due_at) VALUES (?, ?, ?, ?, ?) "
                       "ON CONFLICT (kind, key) DO UPDATE SET payload = excluded.payload, "
                       "received_at = excluded.received_at, due_at = excluded.due_at, status = 'pending', "
                       "decided_at = NULL, outcome = NULL",
                       [(t.kind, t.key, dumps(t.payload), t.received_at, t.due_at) for t in triggers])

    def forget(self, user_id: str) -> None:
        """A forgotten user's triggers go; campaigns that named them keep the others."""
        with self.db.transaction() as db:
            db.execute(f"DELETE FROM push_triggers WHERE key = ? OR {self.db.json_field('payload', 'user_id')} = ?",
                       (user_id, user_id))
            for table, key, column in (("push_triggers", "id", "payload"), ("push_campaigns", "id", "request")):
                # Text search finds the candidates; the JSON decides (an id may be part of another).
                rows = db.execute(f"SELECT {key}, {column} FROM {table} WHERE {self.db.contains(column)}",
                                  (user_id,)).fetchall()
                for row_key, text in rows:
                    value = json.loads(text)
                    cleaned = without_user(value, user_id)
                    if cleaned != value:
                        db.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = ?", (dumps(cleaned), row_key))

    def due(self, now: float, limit: int = 100) -> list[Trigger]:
        rows = self.db.query("SELECT id, kind, key, payload, received_at, due_at FROM push_triggers "
                             "WHERE status = 'pending' AND due_at <= ? ORDER BY due_at, id LIMIT ?", (now, limit))
        return [Trigger(kind, key, received, due, json.loads(payload), id_)
                for id_, kind, key, payload, received, due in rows]

    def next_due(self) -> float | None:
        return self.db.query("SELECT min(due_at) FROM push_triggers WHERE status = 'pending'")[0][0]

    @staticmethod
    def finish(db: Connection, trigger: Trigger, now: float, outcome: dict[str, Any]) -> None:
        db.execute("UPDATE push_triggers SET status = 'done', decided_at = ?, outcome = ? WHERE id = ?",
                   (now, dumps(outcome), trigger.id))

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        rows = self.db.query("SELECT status, received_at, decided_at, outcome FROM push_triggers "
                             "WHERE kind = ? AND key = ?", (kind, key))
        if not rows:
            return None
        status, received, decided, outcome = rows[0]
        return {"status": status, "received_at": received, "decided_at": decided,
                "outcome": json.loads(outcome) if outcome else None}

    def latencies(self, last: int = 1000) -> list[tuple[str, float]]:
        """(kind, seconds from receipt to decision) of the latest decided triggers that were
        due on receipt (timers are due later by design)."""
        rows = self.db.query("SELECT kind, decided_at - received_at FROM push_triggers WHERE status = 'done' "
                             "AND due_at <= received_at ORDER BY decided_at DESC LIMIT ?", (last,))
        return [(kind, max(0.0, float(seconds))) for kind, seconds in rows]


# -- detection ------------------------------------------------------------------------------


@dataclass(slots=True)
class ItemState:
    available: bool
    price: float | None


def price_of(item: ItemRecord, attribute: str) -> float | None:
    value = item.attributes.get(attribute)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def item_triggers(config: Triggers, before: dict[str, ItemState], items: Sequence[ItemRecord], now: float,
                  engaged: Any) -> list[Trigger]:
    """Triggers from items compared with push's snapshot of them (`before`; a missing id is
    a new item). `engaged(item_id)`: whether anyone engaged with the item already."""
    out: list[Trigger] = []
    arrived: list[str] = []
    attribute = config.price_drop.price_attribute
    for item in items:
        old = before.get(item.item_id)
        price = price_of(item, attribute)
        if old is None:
            fresh = now - item.created_at <= config.item_created.max_age_s
            if config.item_created.enabled and item.available and fresh and (item.title or item.text) \
                    and not engaged(item.item_id):
                arrived.append(item.item_id)
            continue
        if config.back_in_stock.enabled and item.available and not old.available:
            out.append(Trigger("back_in_stock", f"{item.item_id}|{now:.6f}", now, now, {"item_id": item.item_id}))
        if config.price_drop.enabled and item.available and price is not None and old.price is not None \
                and price <= old.price * (1 - config.price_drop.min_drop):
            out.append(Trigger("price_drop", f"{item.item_id}|{old.price:g}>{price:g}|{now:.6f}", now, now,
                               {"item_id": item.item_id, "old_price": old.price, "price": price}))
    if arrived:
        key = arrived[0] if len(arrived) == 1 else f"{arrived[0]}+{len(arrived) - 1}|{now:.6f}"
        out.append(Trigger("item_created", key, now, now, {"item_ids": arrived}))
    return out


def event_triggers(config: Triggers, events: Sequence[tuple[int, EventRecord]], now: float
                   ) -> tuple[list[Trigger], list[Trigger]]:
    """(new triggers, re-armed timers) from events read off the log. Events too old for
    any reminder to still be useful (an import of history) start nothing."""
    carts: list[Trigger] = []
    timers: dict[str, Trigger] = {}
    cart, next_best = config.cart_abandoned, config.next_best
    for _, event in events:
        if cart.enabled and event.type == CART:
            due = event.timestamp + cart.after_s
            if due + cart.expires_s > now:
                carts.append(Trigger("cart_abandoned", f"{event.user_id}|{event.item_id}|{event.timestamp:.6f}",
                                     now, due, {"user_id": event.user_id, "item_id": event.item_id,
                                                "cart_at": event.timestamp}))
        if next_best.enabled and not event.type.startswith("push_"):
            due = event.timestamp + next_best.session_gap_s
            known = timers.get(event.user_id)
            if due + next_best.expires_s > now and (known is None or known.due_at < due):
                timers[event.user_id] = Trigger("next_best", event.user_id, now, due,
                                                {"user_id": event.user_id, "last_event_at": event.timestamp})
    return carts, list(timers.values())
