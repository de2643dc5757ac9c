"""The Engine: the one object behind the HTTP API, the CLI, push and evaluation.

Where an event goes:        Engine.ingest -> Store.append_events (commit) -> OnlineState.apply
Where a recommendation
comes from:                 Engine.recommend -> UserContext -> sources -> fusion -> items
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from kairos.clock import Clock, WallClock
from kairos.config import Settings
from kairos.ranking import Fused, reciprocal_rank_fusion
from kairos.schema import Event, Item, ItemFields, Recommendations, RecommendedItem, SequenceEntry
from kairos.schema import SimilarItems, User, UserView
from kairos.sources import CandidateSource, Candidates, CovisitSource, UserContext, build_sources
from kairos.state import Catalog, OnlineState
from kairos.store import EventRecord, ItemRecord, SQLiteStore, Store, UserRecord

ONLINE_MODEL_VERSION = "online-1"
# How many candidates each source proposes per item asked for (fusion needs depth).
CANDIDATE_DEPTH = 3

ProgressCallback = Callable[[int], None]


def records_from(events: Iterable[Event], now: float) -> list[EventRecord]:
    """Resolve timestamps (an event without one happened `now`)."""
    return [
        EventRecord(e.user_id, e.item_id, str(e.type),
                    e.timestamp if e.timestamp is not None else now, e.value, e.context)
        for e in events
    ]


class NotFound(KeyError):
    """An id the caller named does not exist."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(key)
        self.kind = kind
        self.key = key

    def __str__(self) -> str:
        return f"{self.kind} {self.key!r} not found"


class Engine:
    """Owns the store, the online state and the candidate sources.

    Thread-safe: one lock orders writes, so the online state sees events in the
    order the store acknowledged them, and a restart (which replays the store in
    that order) rebuilds the same state.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        store: Store | None = None,
        clock: Clock | None = None,
        rebuild: bool = True,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.store: Store = store or SQLiteStore(
            self.settings.db_path, synchronous=self.settings.sqlite_synchronous
        )
        self.clock: Clock = clock or WallClock()
        self._lock = threading.RLock()
        self.catalog = Catalog()
        self.state = OnlineState(self.settings, self.catalog)
        self.sources: dict[str, CandidateSource] = build_sources(self.state, self.settings)
        self.rebuild_seconds = 0.0
        if rebuild:
            self.rebuild_state(progress)

    # -- lifecycle ------------------------------------------------------------------------

    def rebuild_state(self, progress: ProgressCallback | None = None) -> None:
        """Reload items and replay every stored event, in acknowledgement order."""
        started = time.perf_counter()
        with self._lock:
            self.catalog = Catalog()
            self.state = OnlineState(self.settings, self.catalog)
            self.sources = build_sources(self.state, self.settings)
            for item in self.store.iter_items():
                self.catalog.upsert(item)
            for batch in self.store.iter_events():
                self.state.apply(batch)
                if progress:
                    progress(len(batch))
        self.rebuild_seconds = time.perf_counter() - started

    def close(self) -> None:
        with self._lock:
            self.store.close()

    @property
    def model_version(self) -> str:
        return ONLINE_MODEL_VERSION

    # -- writes ---------------------------------------------------------------------------

    def ingest(self, events: Sequence[Event]) -> int:
        """Store a validated batch durably, then update the online state. All or nothing."""
        return self.ingest_records(records_from(events, self.clock.now()))

    def ingest_records(self, records: Sequence[EventRecord]) -> int:
        """Like `ingest` for records already validated (importers, replay)."""
        if not records:
            return 0
        with self._lock:
            bare: dict[str, ItemRecord] = {}
            for record in records:
                if record.item_id not in self.catalog and record.item_id not in bare:
                    bare[record.item_id] = ItemRecord(record.item_id, created_at=record.timestamp)
            self.store.append_events(records, list(bare.values()))
            for item in bare.values():
                self.catalog.upsert(item)
            self.state.apply(records)
        return len(records)

    def upsert_items(self, items: Sequence[Item]) -> list[ItemRecord]:
        now = self.clock.now()
        with self._lock:
            records = []
            for item in items:
                created_at = item.created_at
                if created_at is None:
                    known = self.catalog.index.get(item.item_id)
                    created_at = float(self.catalog.created_at[known]) if known is not None else now
                records.append(
                    ItemRecord(
                        item.item_id, item.title, item.text, list(item.categories),
                        dict(item.attributes), created_at, item.available,
                    )
                )
            self.store.upsert_items(records)
            for record in records:
                self.catalog.upsert(record)
        return records

    def upsert_item(self, item_id: str, fields: ItemFields) -> ItemRecord:
        return self.upsert_items([Item(item_id=item_id, **fields.model_dump())])[0]

    def delete_item(self, item_id: str) -> ItemRecord:
        """Mark an item unavailable: it keeps its history but is never recommended."""
        with self._lock:
            record = self.get_item(item_id)
            record.available = False
            self.store.upsert_items([record])
            self.catalog.set_available(self.catalog.index[item_id], False)
        return record

    def upsert_users(self, users: Sequence[User]) -> list[UserRecord]:
        """Create or update profiles in one transaction; creation time is kept."""
        now = self.clock.now()
        records = [UserRecord(u.user_id, dict(u.attributes), u.text, now) for u in users]
        with self._lock:
            self.store.upsert_users(records)
        return records

    def upsert_user(self, user: User) -> UserRecord:
        return self.upsert_users([user])[0]

    def forget_user(self, user_id: str) -> int:
        """Delete the user's events, profile and online state. Returns events deleted."""
        with self._lock:
            if user_id not in self.state.users and self.store.get_user(user_id) is None:
                raise NotFound("user", user_id)
            events = self.store.user_events(user_id)
            deleted = self.store.forget_user(user_id)
            self.state.forget(user_id, events)
        return deleted

    # -- reads ----------------------------------------------------------------------------

    def get_item(self, item_id: str) -> ItemRecord:
        record = self.store.get_item(item_id)
        if record is None:
            raise NotFound("item", item_id)
        return record

    def get_user(self, user_id: str, recent: int = 50) -> UserView:
        with self._lock:
            record = self.store.get_user(user_id)
            state = self.state.users.get(user_id)
            if record is None and state is None:
                raise NotFound("user", user_id)
            steps = state.recent[-recent:] if state else []
            return UserView(
                user_id=user_id,
                attributes=record.attributes if record else {},
                text=record.text if record else "",
                known=True,
                event_count=state.event_count if state else 0,
                recent=[
                    SequenceEntry(
                        item_id=self.catalog.ids[s.item], type=s.type,
                        timestamp=s.timestamp, value=s.value,
                    )
                    for s in reversed(steps)
                ],
            )

    def recommend(
        self,
        user_id: str,
        n: int = 10,
        category: str | None = None,
        exclude_seen: bool = True,
        request_id: str | None = None,
    ) -> Recommendations:
        with self._lock:
            ctx = self.user_context(user_id, category, exclude_seen)
            fused = self.fuse(ctx, self.settings.source_weights, depth=max(n * CANDIDATE_DEPTH, 50))
            items = [
                RecommendedItem(item_id=self.catalog.ids[item], score=score, sources=sources,
                                title=self.catalog.titles[item])
                for item, score, sources in fused.top(n)
            ]
        return Recommendations(
            user_id=user_id, items=items, model_version=self.model_version,
            request_id=request_id or uuid.uuid4().hex,
        )

    def user_context(self, user_id: str, category: str | None = None, exclude_seen: bool = True) -> UserContext:
        """The request as sources see it: the user's state and the filters as a mask."""
        with self._lock:
            user = self.state.users.get(user_id)
            allowed = self.catalog.available.copy()
            if category is not None:
                allowed &= self.catalog.category_mask(category)
            if exclude_seen and user is not None and user.seen:
                allowed[np.fromiter(user.seen, dtype=np.int64, count=len(user.seen))] = False
            return UserContext(user_id, self.clock.now(), user, allowed, category)

    def fuse(self, ctx: UserContext, weights: dict[str, float], depth: int) -> Fused:
        """Ask every weighted source for `depth` candidates and fuse their ranks
        (evaluation asks for the whole catalogue to rank a target among all items)."""
        with self._lock:
            ranked = {
                name: source.candidates(ctx, depth)
                for name, source in self.sources.items()
                if weights.get(name, 0.0) > 0
            }
            return reciprocal_rank_fusion(ranked, weights, len(self.catalog))

    def similar(self, item_id: str, n: int = 10, request_id: str | None = None) -> SimilarItems:
        """Items co-visited with this one; topped up with the most popular of its categories."""
        with self._lock:
            idx = self.catalog.index.get(item_id)
            if idx is None:
                raise NotFound("item", item_id)
            allowed = self.catalog.available.copy()
            allowed[idx] = False
            covisit = self.sources["covisit"]
            assert isinstance(covisit, CovisitSource)
            ranked: dict[str, Candidates] = {"covisit": covisit.from_seeds([(idx, 1.0)], allowed, n)}
            if len(ranked["covisit"].items) < n and self.catalog.categories[idx]:
                same_category = np.zeros_like(allowed)
                for name in self.catalog.categories[idx]:
                    same_category |= self.catalog.category_mask(name)
                ctx = UserContext("", self.clock.now(), None, allowed & same_category)
                ranked["popular"] = self.sources["popular"].candidates(ctx, n)
            # Co-visitation first, popular only fills: a lexicographic weight.
            fused = reciprocal_rank_fusion(ranked, {"covisit": 1000.0, "popular": 1.0}, len(self.catalog))
            items = [
                RecommendedItem(
                    item_id=self.catalog.ids[item],
                    score=self._score_of(ranked, sources[0], item),
                    sources=sources, title=self.catalog.titles[item],
                )
                for item, _, sources in fused.top(n)
            ]
        return SimilarItems(
            item_id=item_id, items=items, model_version=self.model_version,
            request_id=request_id or uuid.uuid4().hex,
        )

    @staticmethod
    def _score_of(ranked: dict[str, Candidates], source: str, item: int) -> float:
        found = ranked[source]
        return float(found.scores[np.flatnonzero(found.items == item)[0]])

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "items": len(self.catalog),
                "available_items": int(self.catalog.available.sum()),
                "users": len(self.state.users),
                "events": self.state.events_applied,
                "rebuild_seconds": round(self.rebuild_seconds, 3),
                "model_version": self.model_version,
            }

