"""The Engine: the one object behind the HTTP API, the CLI, push and evaluation.

Where an event goes:        Engine.ingest -> Store.append_events (commit) -> LogFollower
                            -> Engine.apply_events -> OnlineState.apply (-> SemanticState.apply:
                            the user's semantic profile); other processes' events arrive
                            the same way, read from the log (replica/follower.py)
Where a recommendation
comes from:                 Engine.recommend -> UserContext -> sources -> fusion -> items
                            (sources/sequential.py: the transformer on the live sequence)
Where a model comes from:   training/ (kairos train, background retraining) -> registry
                            -> Engine.install_model (an atomic swap)
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kairos.clock import Clock, WallClock
from kairos.config import Settings
from kairos.listeners import Listeners
from kairos.ranking import Fused, reciprocal_rank_fusion
from kairos.ranking.arrivals import new_arrival_slot
from kairos.ranking.fusion import RRF_K
from kairos.ranking.model import RankingModel
from kairos.ranking.prior import PRIOR_RRF_K, prior_weights
from kairos.ranking.rules import ListRule
from kairos.replica import snapshot as snapshots
from kairos.replica.follower import Caught, LogFollower
from kairos.schema import (
    Event,
    Item,
    ItemFields,
    Recommendations,
    RecommendedItem,
    SearchResults,
    SequenceEntry,
    SimilarItems,
    User,
    UserView,
)
from kairos.sources import (
    Candidates,
    CandidateSource,
    CovisitSource,
    UserContext,
    build_sources,
)
from kairos.sources.sequential import ServedSequential
from kairos.state import Catalog, OnlineState
from kairos.state.semantic import SemanticState
from kairos.store import EventRecord, ItemRecord, SQLiteStore, Store, UserRecord
from kairos.store.base import forget_digest
from kairos.training.pipeline import registry as model_registry
from kairos.training.registry import ModelRegistry, RegisteredModel

if TYPE_CHECKING:
    from kairos.text.encoder import TextEncoder

log = logging.getLogger(__name__)

ONLINE_MODEL_VERSION = "online-1"
SIMILAR_METHODS = ("hybrid", "semantic", "covisit")
SIMILAR_REASONS = {
    "covisit": "often chosen right after '{title}'",
    "semantic": "described like '{title}'",
    "popular": "popular in the same category as '{title}'",
}
# How far a personalised search query leans toward the user's profile.
PERSONAL_SEARCH_SHARE = 0.3
# How many candidates each source proposes per item asked for (fusion needs depth).
CANDIDATE_DEPTH = 3

ProgressCallback = Callable[[int], None]


def records_from(events: Iterable[Event], now: float) -> list[EventRecord]:
    """Resolve timestamps (an event without one happened `now`)."""
    return [
        EventRecord(e.user_id, e.item_id, str(e.type),
                    e.timestamp if e.timestamp is not None else now, e.value,
                    {**(e.context or {}), "request_id": e.request_id} if e.request_id else e.context)
        for e in events
    ]


class FeatureDisabled(RuntimeError):
    """The request needs a part of Kairos this instance runs without."""


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

    Thread-safe: one lock orders the state's changes, and the state moves only by the
    log (`self.follower`): it sees events in the order the store acknowledged them,
    whichever process wrote them, and a restart (which replays the store in that order)
    rebuilds the same state.
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
        self.semantic: SemanticState | None = None
        self.registered: RegisteredModel | None = None  # the behaviour model served, as trained
        self.ranking: RankingModel | None = None  # what orders the list: ranker, fitted or configured weights
        self.listeners = Listeners()  # told after each durable write (push, live streams)
        self.list_rules: list[ListRule] = []  # re-order the fused list (the language model's re-ranking)
        self.follower = LogFollower(self.store, self, self._lock)
        self._forgot_here: set[str] = set()  # digests of users this process forgot exactly
        self._recount: threading.Thread | None = None  # aggregates recounted after a forget elsewhere
        self._recount_again = False
        self._closing = threading.Event()
        self.started_from = "log"  # or "snapshot": how the state was rebuilt at start
        self._reset_state()
        self.rebuild_seconds = 0.0
        if rebuild:
            self.rebuild_state(progress)

    @property
    def lock(self) -> threading.RLock:
        """Held by every write: hold it to read the online state consistently (push does)."""
        return self._lock

    # -- lifecycle ------------------------------------------------------------------------

    def rebuild_state(self, progress: ProgressCallback | None = None, use_snapshot: bool = True) -> None:
        """Start from the newest usable snapshot and follow the log from its position, or
        reload items and replay every stored event, in acknowledgement order."""
        started = time.perf_counter()
        with self._lock:
            found = (snapshots.read(self.snapshot_path(), self.settings, self.store.last_position(),
                                    self.store.last_change())
                     if use_snapshot and self.settings.snapshot_interval_s > 0 else None)
            if found is not None:
                self._restore(found)
            else:
                self._replay(progress)
            self.started_from = "snapshot" if found is not None else "log"
            if self.registered is not None:
                self.state.sequential = self._served(self.registered)
                self.state.als = self.ranking.als if self.ranking is not None else None
            else:
                self._load_model_at_start()
        if found is not None:
            self.catch_up()  # what the log gained since the snapshot
        self.rebuild_seconds = time.perf_counter() - started

    def _replay(self, progress: ProgressCallback | None) -> None:
        with self._lock:
            self._reset_state()
            changes_at = self.store.last_change()  # first: a change during the read is re-read
            items = list(self.store.iter_items())
            for item in items:
                self.catalog.upsert(item)
            if self.semantic is not None:
                if any(item.title or item.text or item.categories for item in items):
                    self.semantic.load(self.vectors_path())
                    self.semantic.sync_items(items, show_progress=progress is not None)
                for user in self.store.iter_users():
                    if user.text:
                        self.semantic.set_user_text(user.user_id, user.text)
            events_at = 0
            while batch := self.store.events_after(events_at, 10_000):
                records = [record for _, record in batch]
                self.apply_events(records)
                events_at = batch[-1][0]
                if progress:
                    progress(len(records))
            self.follower.start_at(events_at, changes_at)

    def _restore(self, snapshot: snapshots.Snapshot) -> None:
        parts = snapshot.parts
        with self._lock:
            self._reset_state(parts["catalog"])
            state = self.state
            state.users, state.popularity, state.trending = parts["users"], parts["popularity"], parts["trending"]
            state.covisit, state.events_applied = parts["covisit"], parts["events_applied"]
            for user in state.users.values():
                user.touch()  # revisions are this process's own: nothing kept may match an old one
            if self.semantic is not None:
                items = [item for item in self.store.iter_items() if item.item_id in self.catalog]
                if any(item.title or item.text or item.categories for item in items):
                    self.semantic.load(self.vectors_path())
                    self.semantic.sync_items(items)
                semantic = parts.get("semantic") or {}
                self.semantic.profiles = semantic.get("profiles", {})
                self.semantic.stated = semantic.get("stated", {})
                self.semantic.stated_text = semantic.get("stated_text", {})
            self.follower.start_at(snapshot.events_at, snapshot.changes_at)

    # -- snapshots ------------------------------------------------------------------------

    def snapshot_path(self) -> Path:
        return snapshots.snapshot_path(self.store_path())

    def snapshot_to(self, path: Path | None = None) -> int | None:
        """Write a snapshot of the state as it is now, from a forked process (the lock is
        held only for the fork); returns its pid (see replica/snapshot.py)."""
        with self._lock:
            events_at, changes_at = self.follower.events_at, self.follower.changes_at
            key = snapshots.settings_key(self.settings)
            return snapshots.write_in_child(path or self.snapshot_path(), lambda: snapshots.Snapshot(
                events_at, changes_at, key, self._snapshot_parts(), time.time()))

    def _snapshot_parts(self) -> dict[str, Any]:
        state, semantic = self.state, self.semantic
        return {"catalog": self.catalog, "users": state.users, "popularity": state.popularity,
                "trending": state.trending, "covisit": state.covisit, "events_applied": state.events_applied,
                "semantic": None if semantic is None else {"profiles": semantic.profiles, "stated": semantic.stated,
                                                           "stated_text": semantic.stated_text}}

    def recounting(self) -> bool:
        """Shared counts are being recounted after a forget elsewhere (not yet consistent)."""
        return self._recount is not None and self._recount.is_alive()

    def _load_model_at_start(self) -> None:
        try:
            self.load_current_model()
        except (OSError, ValueError, RuntimeError, KeyError):
            # A damaged artefact must not keep the service down: serve without it.
            log.exception("could not load the current model from %s; serving without it",
                          self.model_registry().root)

    def _reset_state(self, catalog: Catalog | None = None) -> None:
        """Empty (or this) catalogue, online state, semantic state and sources over them."""
        if self.semantic is not None:
            self.semantic.close()
        self.catalog = catalog if catalog is not None else Catalog()
        self.state = OnlineState(self.settings, self.catalog)
        self.semantic = self._semantic_state()
        self.state.semantic = self.semantic
        self.sources: dict[str, CandidateSource] = build_sources(self.state, self.settings)

    def _semantic_state(self) -> SemanticState | None:
        if not self.settings.semantic_enabled:
            return None
        settings = self.settings

        def load() -> TextEncoder:
            from kairos.text.encoder import load_encoder

            return load_encoder(settings.text_model, settings.text_backend,
                                settings.text_cache_dir, threads=settings.text_threads)

        return SemanticState(settings, self.catalog, self.store_path(), load)

    def store_path(self) -> Path:
        return Path(getattr(self.store, "path", self.settings.db_path))

    def vectors_path(self) -> Path:
        """Where the vector index is saved at close and reloaded at start-up."""
        path = self.store_path()
        return path.with_name(path.name + ".vectors")

    def close(self, save_vectors: bool = True) -> None:
        """`save_vectors`: keep the vector index for the next start (one process per
        database does: the leader)."""
        self._closing.set()
        if self._recount is not None:
            self._recount.join(timeout=60)
        with self._lock:
            if self.semantic is not None and save_vectors:
                self.semantic.save(self.vectors_path())
                self.semantic.close()
            self.store.close()

    # -- the behaviour model ---------------------------------------------------------------

    def model_registry(self) -> ModelRegistry:
        return model_registry(self.settings, self.store_path())

    def load_current_model(self) -> str | None:
        """Serve the registry's current version if it is not served already; returns
        the version served afterwards (None: there is no model)."""
        registry = self.model_registry()
        version = registry.current_version()
        if version is not None and version != self.sequential_version:
            registered = registry.load(version)
            if registered is not None:
                self.install_model(registered)
        self.load_current_ranking()
        return self.sequential_version

    def install_ranking(self, ranking: RankingModel | None) -> None:
        """Swap what orders the served list (and the ALS factors it reads); None: the
        configured fusion weights."""
        with self._lock:
            self.ranking = ranking
            self.state.als = ranking.als if ranking is not None else None

    def load_current_ranking(self) -> str | None:
        """Serve the ranking registry's current version when it was trained for the
        behaviour model served now; returns the ranking version served afterwards."""
        from kairos.ranking.model import RankingRegistry

        registry = RankingRegistry(self.model_registry().root / "ranking")
        version = registry.current_version()
        served = self.ranking.version if self.ranking is not None else None
        if version is None or version == served:
            return served
        ranking = registry.load(version)
        if ranking is not None and ranking.sequential_version == self.sequential_version:
            self.install_ranking(ranking)
        return self.ranking.version if self.ranking is not None else None

    def under_prior(self) -> bool:
        """Too small a log to have trained anything: the prior of ranking/prior.py fuses."""
        return (self.settings.ranker != "off" and self.ranking is None
                and self.state.events_applied < self.settings.sequential_min_events)

    def fusion_weights(self, ctx: UserContext | None = None) -> dict[str, float]:
        """The weights fusion uses for this request: fitted ones when the ranking model
        has them; the small-log prior (ranking/prior.py) before there is anything to fit."""
        ranking = self.ranking
        configured = self.settings.source_weights
        if self.settings.ranker == "off":
            return configured
        if self.under_prior():
            visits = len(ctx.user.seen) if ctx is not None and ctx.user is not None else 0
            return prior_weights(configured, visits)
        if ranking is None or ranking.mode == "configured":
            return configured
        if ranking.mode == "learned":  # the ranker was trained over the configured sources' candidates
            return self.settings.source_weights
        return ranking.weights

    def install_model(self, registered: RegisteredModel) -> None:
        """Swap the served behaviour model. The new one is aligned with the catalogue and
        warmed up first; requests see either the old model or the new, never a mix."""
        served = self._served(registered)
        with self._lock:
            served.align()  # items may have arrived while it warmed up
            self.registered = registered
            self.state.sequential = served
            if self.ranking is not None and self.ranking.sequential_version != served.version:
                self.install_ranking(None)  # its features read the previous model's scores

    def _served(self, registered: RegisteredModel) -> ServedSequential:
        with self._lock:
            lookup = self.semantic.item_vector if self.semantic is not None else None
            served = ServedSequential(registered.model, registered.item_ids, self.catalog, lookup)
        served.model.score_sequence([1])  # first-call costs (allocations, kernels) before serving
        return served

    @property
    def sequential_version(self) -> str | None:
        served = self.state.sequential
        return served.version if served is not None else None

    @property
    def model_version(self) -> str:
        """What answered: the online state, plus the behaviour model's version when one serves."""
        served = self.state.sequential
        return f"{ONLINE_MODEL_VERSION}+{served.version}" if served is not None else ONLINE_MODEL_VERSION

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
            last = self.store.append_events(records, list(bare.values()))
            caught = self.follower.appended(records, last)
        self._tell(caught)
        return len(records)

    def upsert_items(self, items: Sequence[Item]) -> list[ItemRecord]:
        now = self.clock.now()
        with self._lock:
            records: list[ItemRecord] = []
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
            if self.semantic is not None:
                # Encoded before the commit: processes that follow the log find the vectors cached.
                self.semantic.embed_items(records, show_progress=len(records) >= 1000)
            last = self.store.upsert_items(records)
            caught = self.follower.changed_items(records, last)
        self._tell(caught)
        return records

    def upsert_item(self, item_id: str, fields: ItemFields) -> ItemRecord:
        return self.upsert_items([Item(item_id=item_id, **fields.model_dump())])[0]

    def delete_item(self, item_id: str) -> ItemRecord:
        """Mark an item unavailable: it keeps its history but is never recommended."""
        with self._lock:
            record = self.get_item(item_id)
            record.available = False
            caught = self.follower.changed_items([record], self.store.upsert_items([record]))
        self._tell(caught)
        return record

    def upsert_users(self, users: Sequence[User]) -> list[UserRecord]:
        """Create or update profiles in one transaction; creation time is kept."""
        now = self.clock.now()
        records = [UserRecord(u.user_id, dict(u.attributes), u.text, now) for u in users]
        with self._lock:
            stated = [r.text for r in records if r.text.strip()]
            if self.semantic is not None and stated:
                self.semantic.embed(stated)  # cached for the processes that follow the log
            caught = self.follower.changed_users(records, self.store.upsert_users(records))
        self._tell(caught)
        return records

    def upsert_user(self, user: User) -> UserRecord:
        return self.upsert_users([user])[0]

    def forget_user(self, user_id: str) -> int:
        """Delete the user's events, profile and online state. Returns events deleted."""
        self.catch_up()
        with self._lock:
            if user_id not in self.state.users and self.store.get_user(user_id) is None:
                raise NotFound("user", user_id)
            events = self.store.user_events(user_id)
            # The events this state applied are exactly these: subtract them, rather than
            # recount everything as processes that learn of it from the log must.
            self._forgot_here.add(forget_digest(user_id))
            deleted = self.store.forget_user(user_id)
            snapshots.discard(self.snapshot_path())  # it holds the user's events
            self.state.forget(user_id, events)
            self._forget_derived(user_id)
        self.listeners.user_forgotten(user_id)
        return deleted

    # -- following the log: the one way the state changes ----------------------------------

    def catch_up(self) -> Caught:
        """Apply what other processes wrote since this one last looked (cheap when nothing
        was): every read does, so a user's next request reflects what they just did,
        whichever process took it."""
        caught = self.follower.catch_up()
        if caught:
            self._tell(caught)
        return caught

    def apply_events(self, records: Sequence[EventRecord]) -> None:
        with self._lock:
            for record in records:
                if record.item_id not in self.catalog:  # the bare item the writer stored with it
                    self.catalog.upsert(ItemRecord(record.item_id, created_at=record.timestamp))
            self._apply_events(records)

    def _apply_events(self, records: Sequence[EventRecord]) -> None:
        self.state.apply(records)
        if self.semantic is not None:
            self.semantic.apply(records, self.settings.event_weight)

    def apply_items(self, records: Sequence[ItemRecord]) -> None:
        with self._lock:
            for record in records:
                self.catalog.upsert(record)
            if self.semantic is not None:
                # Indexed before we answer: a new item is retrievable at once ...
                self.semantic.sync_items(records, show_progress=len(records) >= 1000)
            if self.state.sequential is not None:
                # ... and the behaviour model represents it from its text.
                self.state.sequential.add_items([self.catalog.index[r.item_id] for r in records])

    def apply_users(self, records: Sequence[UserRecord]) -> None:
        if self.semantic is not None:
            for record in records:
                self.semantic.set_user_text(record.user_id, record.text)

    def drop_users(self, digests: set[str]) -> list[str]:
        """Users forgotten by another process: their own state goes at once; the shared
        counts they fed (popularity, co-visitation) are recounted from the log in the
        background, since their events are gone from it."""
        with self._lock:
            mine = digests & self._forgot_here
            self._forgot_here -= mine
            digests = digests - mine
            if not digests:
                return []
            known = set(self.state.users) | (set(self.semantic.stated) if self.semantic is not None else set())
            dropped = [user for user in known if forget_digest(user) in digests]
            for user in dropped:
                self.state.users.pop(user, None)
                self._forget_derived(user)
            snapshots.discard(self.snapshot_path())
            self._recount_soon()
            return dropped

    def _forget_derived(self, user_id: str) -> None:
        """What was computed from the user's state: their semantic profile, the model's
        query, their folded-in factors."""
        if self.semantic is not None:
            self.semantic.forget(user_id)
        if self.state.sequential is not None:
            self.state.sequential.forget(user_id)
        for source in self.sources.values():
            forget = getattr(source, "forget", None)
            if forget is not None:
                forget(user_id)

    def _recount_soon(self) -> None:
        if self._recount is not None and self._recount.is_alive():
            self._recount_again = True
            return
        self._recount = threading.Thread(target=self._recount_aggregates, name="kairos-recount", daemon=True)
        self._recount.start()

    def _recount_aggregates(self) -> None:
        """Popularity, trend and co-visitation counted afresh from the log, then caught up
        to the live position and swapped in under the lock."""
        while True:
            self._recount_again = False
            fresh = OnlineState(self.settings, self.catalog)
            with self._lock:
                target = self.follower.events_at
            position = 0
            while position < target and not self._closing.is_set() \
                    and (batch := self.store.events_after(position, 10_000)):
                records = [record for at, record in batch if at <= target]
                fresh.apply(records)
                position = batch[-1][0]
            if self._closing.is_set():
                return
            with self._lock:
                while batch := self.store.events_after(position, 10_000):
                    records = [record for at, record in batch if at <= self.follower.events_at]
                    fresh.apply(records)
                    if len(records) < len(batch):
                        break
                    position = batch[-1][0]
                self.state.popularity, self.state.trending = fresh.popularity, fresh.trending
                self.state.covisit, self.state.events_applied = fresh.covisit, fresh.events_applied
            if not self._recount_again:
                return

    def _tell(self, caught: Caught) -> None:
        """The listeners learn what the state applied (outside the lock)."""
        if caught.events:
            self.listeners.events_ingested(caught.events)
        if caught.items:
            self.listeners.items_upserted(caught.items)
        if caught.users:
            self.listeners.users_upserted(caught.users)
        for user_id in caught.forgotten:
            self.listeners.user_forgotten(user_id)

    # -- reads ----------------------------------------------------------------------------

    def get_item(self, item_id: str) -> ItemRecord:
        record = self.store.get_item(item_id)
        if record is None:
            raise NotFound("item", item_id)
        return record

    def get_user(self, user_id: str, recent: int = 50) -> UserView:
        self.catch_up()
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
        diversity: float = 0.0,
        apply_rules: bool = True,
        weights: dict[str, float] | None = None,
        ranker: bool = True,
    ) -> Recommendations:
        """The served path: context, every weighted source, fusion (or the learned
        ranker over the sources' candidates), optional MMR diversification on text
        embeddings, the list rules (`apply_rules`), and a reason for each item.
        `weights` and `ranker` override what the service would use (an experiment's arm)."""
        self.catch_up()
        with self._lock:
            ctx = self.user_context(user_id, category, exclude_seen)
            prior = weights is None and self.under_prior()
            weights = weights if weights is not None else self.fusion_weights(ctx)
            depth = max(n * CANDIDATE_DEPTH, 50)
            fused = self.fuse(ctx, weights, depth=depth, k=PRIOR_RRF_K if prior else RRF_K)
            if ranker and self.ranking is not None and self.settings.ranker != "off":
                fused = self.ranking.rescore(self.state, ctx, fused)
            if diversity > 0 and self.semantic is not None and self.semantic.index is not None:
                chosen = self._diversify(fused.top(depth), n, diversity)
            else:
                chosen = fused.top(n)
            chosen = self._cold_start_slots(chosen, fused, n)
            if prior:
                chosen = new_arrival_slot(self.catalog, ctx, chosen, fused, self.settings.cold_start_min_similarity)
            if apply_rules:
                for rule in self.list_rules:
                    chosen = rule.apply(ctx, chosen, fused, n)
            items = [
                RecommendedItem(item_id=self.catalog.ids[item], score=score, sources=sources,
                                title=self.catalog.titles[item], reason=self._reason(ctx, item, sources))
                for item, score, sources in chosen
            ]
        return Recommendations(
            user_id=user_id, items=items, model_version=self.model_version,
            request_id=request_id or uuid.uuid4().hex,
            sources=[name for name in self.sources if weights.get(name, 0.0) > 0],
        )

    def _cold_start_slots(self, chosen: list[tuple[int, float, list[str]]], fused: Fused,
                          n: int) -> list[tuple[int, float, list[str]]]:
        """Make sure each ten of the list has, by place `cold_start_position`, an item
        nobody has engaged with yet, if one fits the user: otherwise a new arrival never
        beats items with behaviour behind them. Fit: the behaviour model proposed it (from
        its text and the user's sequence), or the semantic source finds it close to the
        user; the best fused one goes first, moving up from further down the list if it
        is there already."""
        first = self.settings.cold_start_position
        if first == 0 or len(chosen) < first:
            return chosen
        engaged = self.state.popularity.engaged
        semantic = fused.ranked.get("semantic")
        sequential = fused.ranked.get("sequential")
        fitting = set(sequential.items.tolist()) if sequential is not None else set()
        if semantic is not None:
            fitting.update(item for item, score in zip(semantic.items.tolist(), semantic.scores.tolist(), strict=True)
                           if score >= self.settings.cold_start_min_similarity)
        cold = sorted((item for item in fitting if not engaged(item)), key=lambda item: (-fused.scores[item], item))
        if not cold:
            return chosen
        ranked = list(chosen)
        for place in range(first - 1, len(ranked), 10):
            block = ranked[place - first + 1 : place + 1]
            if any(not engaged(item) for item, _, _ in block):
                continue  # this ten already shows a new item by that place
            above = {item for item, _, _ in ranked[:place]}
            candidate = next((item for item in cold if item not in above), None)
            if candidate is None:
                break
            later = next((i for i, (item, _, _) in enumerate(ranked) if item == candidate), None)
            if later is not None:
                del ranked[later]
            else:
                ranked.pop()  # the list keeps its length
            sources = fused.sources_of(candidate) or ["semantic"]
            score = ranked[place][1] if place < len(ranked) else (ranked[-1][1] if ranked else 0.0)
            ranked.insert(place, (candidate, score, sources))
        return ranked

    def _reason(self, ctx: UserContext, item: int, sources: list[str]) -> str:
        for name in sources:
            explain = getattr(self.sources.get(name), "explain", None)
            reason = explain(ctx, item) if explain else None
            if reason:
                return reason
        return ""

    def _diversify(self, ranked: list[tuple[int, float, list[str]]], n: int,
                   diversity: float) -> list[tuple[int, float, list[str]]]:
        """Maximal marginal relevance (Carbonell & Goldstein, 1998) on text embeddings:
        each pick maximises (1 - diversity) * relevance - diversity * max similarity to
        the picks so far. Items without an embedding only compete on relevance."""
        assert self.semantic is not None and self.semantic.index is not None
        if not ranked:
            return []
        top_score = ranked[0][1] or 1.0
        vectors = [self.semantic.item_vector(item) for item, _, _ in ranked]
        chosen: list[int] = []
        remaining = list(range(len(ranked)))
        while remaining and len(chosen) < n:
            def value(i: int) -> float:
                similarity = max((float(vectors[i] @ vectors[j]) for j in chosen
                                  if vectors[i] is not None and vectors[j] is not None), default=0.0)
                return (1 - diversity) * ranked[i][1] / top_score - diversity * similarity
            best = max(remaining, key=value)
            chosen.append(best)
            remaining.remove(best)
        return [ranked[i] for i in chosen]

    def search(self, query: str, n: int = 10, user_id: str | None = None,
               request_id: str | None = None) -> SearchResults:
        """Semantic search over available items; with a user, the query leans toward
        their profile (PERSONAL_SEARCH_SHARE)."""
        if self.semantic is None:
            raise FeatureDisabled("semantic search needs the language-model layer (KAIROS_SEMANTIC_ENABLED)")
        self.catch_up()
        with self._lock:
            vector = self.semantic.encoder.encode([query])[0]
            if user_id is not None:
                profile = self.semantic.profile(user_id)
                if profile is not None:
                    vector = vector + PERSONAL_SEARCH_SHARE * profile
                    vector = vector / np.linalg.norm(vector)
            items: list[RecommendedItem] = []
            if self.semantic.index is not None and len(self.semantic.index):
                keys, scores = self.semantic.index.search(vector, n, self.catalog.available)
                items = [
                    RecommendedItem(item_id=self.catalog.ids[key], score=float(score), sources=["semantic"],
                                    title=self.catalog.titles[key], reason=f"matches “{query[:60]}”")
                    for key, score in zip(keys[0].tolist(), scores[0].tolist(), strict=True) if key >= 0
                ]
        return SearchResults(query=query, user_id=user_id, items=items, model_version=self.model_version,
                             request_id=request_id or uuid.uuid4().hex)

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

    def fuse(self, ctx: UserContext, weights: dict[str, float], depth: int, k: float = RRF_K) -> Fused:
        """Ask every weighted source for `depth` candidates and fuse their ranks
        (evaluation asks for the whole catalogue to rank a target among all items)."""
        with self._lock:
            ranked = {
                name: source.candidates(ctx, depth)
                for name, source in self.sources.items()
                if weights.get(name, 0.0) > 0
            }
            return reciprocal_rank_fusion(ranked, weights, len(self.catalog), k)

    def similar(self, item_id: str, n: int = 10, request_id: str | None = None,
                method: str = "hybrid") -> SimilarItems:
        """Items like this one: co-visited (`covisit`), nearest in text (`semantic`) or
        both fused (`hybrid`); topped up with the most popular of its categories."""
        if method not in SIMILAR_METHODS:
            raise ValueError(f"method must be one of {', '.join(SIMILAR_METHODS)}")
        self.catch_up()
        with self._lock:
            idx = self.catalog.index.get(item_id)
            if idx is None:
                raise NotFound("item", item_id)
            allowed = self.catalog.available.copy()
            allowed[idx] = False
            ranked: dict[str, Candidates] = {}
            if method in ("covisit", "hybrid"):
                covisit = self.sources["covisit"]
                assert isinstance(covisit, CovisitSource)
                ranked["covisit"] = covisit.from_seeds([(idx, 1.0)], allowed, n)
            vector = self.semantic.item_vector(idx) if self.semantic is not None else None
            if method in ("semantic", "hybrid") and vector is not None:
                assert self.semantic is not None and self.semantic.index is not None
                keys, scores = self.semantic.index.search(vector, n, allowed)
                found = keys[0] >= 0
                ranked["semantic"] = Candidates(keys[0][found].astype(np.int64), scores[0][found])
            if sum(len(c.items) for c in ranked.values()) < n and self.catalog.categories[idx]:
                same_category = np.zeros_like(allowed)
                for name in self.catalog.categories[idx]:
                    same_category |= self.catalog.category_mask(name)
                ctx = UserContext("", self.clock.now(), None, allowed & same_category)
                ranked["popular"] = self.sources["popular"].candidates(ctx, n)
            # Behaviour leads ties with text (hybrid interleaves them); popular only fills.
            fused = reciprocal_rank_fusion(ranked, {"covisit": 1000.0, "semantic": 900.0, "popular": 1.0},
                                           len(self.catalog))
            title = self.catalog.titles[idx] or item_id
            items = [
                RecommendedItem(
                    item_id=self.catalog.ids[item],
                    score=self._score_of(ranked, sources[0], item),
                    sources=sources, title=self.catalog.titles[item],
                    reason=SIMILAR_REASONS[sources[0]].format(title=title),
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
                "started_from": self.started_from,
                "model_version": self.model_version,
            }

