"""Writes: each is stored durably first (all or nothing), then applied by the log
follower to this process's state and told to the listeners."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from kairos.errors import NotFound
from kairos.ingest.target import WriteTarget
from kairos.replica.follower import Caught
from kairos.schema import Event, Item, ItemFields, User
from kairos.store import AlreadyAppended, BatchKey, EventRecord, ItemRecord, UserRecord


def records_from(events: Iterable[Event], now: float) -> list[EventRecord]:
    """Resolve timestamps (an event without one happened `now`)."""
    return [
        EventRecord(e.user_id, e.item_id, str(e.type),
                    e.timestamp if e.timestamp is not None else now, e.value,
                    {**(e.context or {}), "request_id": e.request_id} if e.request_id else e.context)
        for e in events
    ]


class Writer:
    def __init__(self, target: WriteTarget) -> None:
        self.target = target

    def ingest(self, events: Sequence[Event], key: BatchKey | None = None) -> int:
        """Store a validated batch durably, then update the online state. All or nothing.
        A batch sent again with its key is stored once: the count it was acknowledged with
        is returned (KeyReused when the key came with another batch)."""
        try:
            return self.ingest_records(records_from(events, self.target.clock.now()), key)
        except AlreadyAppended as replay:
            return replay.accepted

    def ingest_records(self, records: Sequence[EventRecord], key: BatchKey | None = None) -> int:
        """Like `ingest` for records already validated (importers, replay). An event's
        unknown item is stored with it, bare (its text may come later)."""
        if not records:
            return 0
        target = self.target
        bare: dict[str, ItemRecord] = {}
        for record in records:
            if record.item_id not in target.catalog and record.item_id not in bare:
                bare[record.item_id] = ItemRecord(record.item_id, created_at=record.timestamp)
        # The store serialises writes itself: the state's lock (which reads take) is held
        # for applying only, not while the commit waits for the disk. A batch that another
        # thread's catch-up applied first is not applied twice (the follower's positions).
        last = target.store.append_events(records, list(bare.values()), key)
        caught = target.follower.appended(records, last)
        target.tell(caught)
        return len(records)

    def upsert_items(self, items: Sequence[Item]) -> list[ItemRecord]:
        target = self.target
        now = target.clock.now()
        records: list[ItemRecord] = []
        with target.lock:
            for item in items:
                created_at = item.created_at
                if created_at is None:
                    known = target.catalog.index.get(item.item_id)
                    created_at = float(target.catalog.created_at[known]) if known is not None else now
                records.append(ItemRecord(item.item_id, item.title, item.text, list(item.categories),
                                          dict(item.attributes), created_at, item.available))
        if target.semantic is not None:
            # Encoded before the commit (processes that follow the log find the vectors
            # cached) and outside the state's lock: reads go on meanwhile.
            target.semantic.embed_items(records, show_progress=len(records) >= 1000)
        last = target.store.upsert_items(records)
        caught = target.follower.changed_items(records, last)
        target.tell(caught)
        return records

    def upsert_item(self, item_id: str, fields: ItemFields) -> ItemRecord:
        return self.upsert_items([Item(item_id=item_id, **fields.model_dump())])[0]

    def delete_item(self, item_id: str) -> ItemRecord:
        """Mark an item unavailable: it keeps its history but is never recommended."""
        target = self.target
        with target.lock:
            record = target.store.get_item(item_id)
            if record is None:
                raise NotFound("item", item_id)
            record.available = False
            caught = target.follower.changed_items([record], target.store.upsert_items([record]))
        target.tell(caught)
        return record

    def upsert_users(self, users: Sequence[User]) -> list[UserRecord]:
        """Create or update profiles in one transaction; creation time is kept."""
        target = self.target
        now = target.clock.now()
        records = [UserRecord(u.user_id, dict(u.attributes), u.text, now) for u in users]
        stated = [r.text for r in records if r.text.strip()]
        if target.semantic is not None and stated:
            target.semantic.embed(stated)  # cached for the processes that follow the log
        caught = target.follower.changed_users(records, target.store.upsert_users(records))
        target.tell(caught)
        return records

    def upsert_user(self, user: User) -> UserRecord:
        return self.upsert_users([user])[0]

    def forget_user(self, user_id: str) -> int:
        """Delete the user's events, profile and online state. Returns events deleted."""
        target = self.target
        target.catch_up()
        with target.lock:
            if not target.knows_user(user_id) and target.store.get_user(user_id) is None:
                raise NotFound("user", user_id)
            events = target.store.user_events(user_id)
            deleted = target.store.forget_user(user_id)
            target.forget_here(user_id, events)
        target.tell(Caught(forgotten=[user_id]))
        return deleted
