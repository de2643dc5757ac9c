"""The Engine: the one object behind the HTTP API, the CLI, push and evaluation.

Where an event goes:        ingest/writer.py: Store.append_events (commit) -> LogFollower
                            -> Engine.apply_events -> OnlineState.apply (-> SemanticState.apply:
                            the user's semantic profile); other processes' events arrive
                            the same way, read from the log (replica/follower.py)
Where a recommendation
comes from:                 serving/recommend.py: UserContext -> sources -> fusion or the
                            learned ranker -> items (sources/sequential.py: the transformer
                            on the live sequence)
Where a model comes from:   training/ (kairos train, background retraining) -> registry
                            -> Engine.install_model (an atomic swap)

The Engine is one process's replica: it owns the online state and moves it only by the
log; the ingest path (ingest/) and the serving path (serving/) work on it through the
small views they declare, and the methods below hand requests to them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kairos import serving
from kairos.clock import Clock, WallClock
from kairos.config import Settings
from kairos.errors import FeatureDisabled, NotFound
from kairos.ingest import Writer
from kairos.listeners import Listeners
from kairos.ranking import Fused
from kairos.ranking.fusion import RRF_K
from kairos.ranking.model import RankingModel
from kairos.ranking.rules import ListRule
from kairos.replica import snapshot as snapshots
from kairos.replica.follower import Caught, LogFollower
from kairos.schema import (
    Event,
    Item,
    ItemFields,
    Recommendations,
    SearchResults,
    SimilarItems,
    User,
    UserView,
)
from kairos.serving import Recommender
from kairos.sources import CandidateSource, UserContext, build_sources
from kairos.sources.sequential import ServedSequential
from kairos.state import Catalog, OnlineState
from kairos.state.semantic import SemanticState
from kairos.store import EventRecord, ItemRecord, Store, UserRecord, open_store
from kairos.store.base import BatchKey, forget_digest
from kairos.training.pipeline import registry as model_registry
from kairos.training.registry import ModelRegistry, RegisteredModel

if TYPE_CHECKING:
    from kairos.text.encoder import TextEncoder

log = logging.getLogger(__name__)

__all__ = ["Engine", "FeatureDisabled", "NotFound"]  # the errors, for the API's handlers

ONLINE_MODEL_VERSION = "online-1"

ProgressCallback = Callable[[int], None]


class Engine:
    """One process's replica: owns the store, the online state and the candidate
    sources; writes go through `writer` (ingest/), reads through `recommender` and the
    other serving/ functions.

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
        self.store: Store = store or open_store(self.settings)
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
        self.writer = Writer(self)  # the ingest path
        self.recommender = Recommender(self)  # the serving path
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
        self.recommender.cache.clear()  # its keys name the old catalogue's generations
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

        registry = RankingRegistry.beside(self.model_registry())
        version = registry.current_version()
        served = self.ranking.version if self.ranking is not None else None
        if version is None or version == served:
            return served
        ranking = registry.load(version)
        if ranking is not None and ranking.sequential_version == self.sequential_version:
            self.install_ranking(ranking)
        return self.ranking.version if self.ranking is not None else None

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

    # -- the ingest path (ingest/writer.py) ----------------------------------------------

    def ingest(self, events: Sequence[Event], key: BatchKey | None = None) -> int:
        return self.writer.ingest(events, key)

    def ingest_records(self, records: Sequence[EventRecord]) -> int:
        return self.writer.ingest_records(records)

    def upsert_items(self, items: Sequence[Item]) -> list[ItemRecord]:
        return self.writer.upsert_items(items)

    def upsert_item(self, item_id: str, fields: ItemFields) -> ItemRecord:
        return self.writer.upsert_item(item_id, fields)

    def delete_item(self, item_id: str) -> ItemRecord:
        return self.writer.delete_item(item_id)

    def upsert_users(self, users: Sequence[User]) -> list[UserRecord]:
        return self.writer.upsert_users(users)

    def upsert_user(self, user: User) -> UserRecord:
        return self.writer.upsert_user(user)

    def forget_user(self, user_id: str) -> int:
        return self.writer.forget_user(user_id)

    def knows_user(self, user_id: str) -> bool:
        return user_id in self.state.users

    def forget_here(self, user_id: str, events: list[EventRecord]) -> None:
        with self._lock:
            # The events this state applied are exactly these: subtract them, rather than
            # recount everything as processes that learn of it from the log must.
            self._forgot_here.add(forget_digest(user_id))
            snapshots.discard(self.snapshot_path())  # it holds the user's events
            self.state.forget(user_id, events)
            self._forget_derived(user_id)

    # -- the serving path (serving/) --------------------------------------------------------

    def recommend(self, user_id: str, n: int = 10, category: str | None = None, exclude_seen: bool = True,
                  request_id: str | None = None, diversity: float = 0.0, apply_rules: bool = True,
                  weights: dict[str, float] | None = None, ranker: bool = True) -> Recommendations:
        return self.recommender.recommend(user_id, n, category, exclude_seen, request_id, diversity,
                                          apply_rules, weights, ranker)

    def user_context(self, user_id: str, category: str | None = None, exclude_seen: bool = True) -> UserContext:
        return self.recommender.user_context(user_id, category, exclude_seen)

    def fuse(self, ctx: UserContext, weights: dict[str, float], depth: int, k: float = RRF_K) -> Fused:
        return self.recommender.fuse(ctx, weights, depth, k)

    def fusion_weights(self, ctx: UserContext | None = None) -> dict[str, float]:
        return self.recommender.fusion_weights(ctx)

    def similar(self, item_id: str, n: int = 10, request_id: str | None = None,
                method: str = "hybrid") -> SimilarItems:
        return serving.similar(self, item_id, n, request_id, method)

    def search(self, query: str, n: int = 10, user_id: str | None = None,
               request_id: str | None = None) -> SearchResults:
        return serving.search(self, query, n, user_id, request_id)

    def get_user(self, user_id: str, recent: int = 50) -> UserView:
        return serving.user_view(self, user_id, recent)

    def get_item(self, item_id: str) -> ItemRecord:
        record = self.store.get_item(item_id)
        if record is None:
            raise NotFound("item", item_id)
        return record

    # -- following the log: the one way the state changes ----------------------------------

    def catch_up(self) -> Caught:
        """Apply what other processes wrote since this one last looked (cheap when nothing
        was): every read does, so a user's next request reflects what they just did,
        whichever process took it."""
        caught = self.follower.catch_up()
        if caught:
            self.tell(caught)
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
        self.recommender.cache.forget(user_id)
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

    def tell(self, caught: Caught) -> None:
        """The listeners learn what the state applied (outside the lock)."""
        if caught.events:
            self.listeners.events_ingested(caught.events)
        if caught.items:
            self.listeners.items_upserted(caught.items)
        if caught.users:
            self.listeners.users_upserted(caught.users)
        for user_id in caught.forgotten:
            self.listeners.user_forgotten(user_id)

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

