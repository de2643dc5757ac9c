"""The generative model on the serving path, without ever being waited for.

After a user's event the engine tells this service (an EngineListener); the user joins
a coalescing queue (worker.py) and a background thread computes the model's list for
their latest event — rerank: the served top candidates in the model's order; generate:
the titles it writes — and caches it by the user's event count (cache.py). A request
uses the cached list only if it is fresh for the user's latest event: the re-ordering
as a list rule after fusion, the generated items as the `llm` source in fusion. Until
then, or when the model is off, slow or down, the request gets the list without it.
When a list lands, `on_ready` tells the live streams (GET /v1/recommendations/{user}/stream).

Explanations (`?explain=true`) work the same way: a request gets the model's sentence
for an item if one was written for the user's latest event and is grounded (words.py),
the template reason otherwise, and the missing ones are queued for a second thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kairos.config import Settings
from kairos.llm.backend import ModelUnavailable
from kairos.llm.cache import ListCache, LlmList, LlmListCache
from kairos.llm.lists import LlmRecommender
from kairos.llm.prompt import steps_of
from kairos.llm.words import explain_prompt, first_sentence, grounded
from kairos.llm.worker import CoalescingWorker
from kairos.ranking.fusion import Fused
from kairos.ranking.rules import Ranked
from kairos.sources.base import Candidates, UserContext, action_phrase
from kairos.store.base import EventRecord, ItemRecord, UserRecord

if TYPE_CHECKING:
    from kairos.engine import Engine

log = logging.getLogger(__name__)
GENERATED = 10  # titles written per user (generate mode)
LATENCIES = 1000  # event -> list ready, kept for percentiles
SENTENCES_KEPT = 100_000  # users' explanation sentences kept in memory
EXPLAINED = 5  # items of a list explained per request at most
SENTENCE_TOKENS = 48
SEPARATOR = "\x1f"  # user SEPARATOR item: an explanation's key


class LlmService:
    def __init__(self, engine: Engine, on_ready: Callable[[str], None] | None = None,
                 model: Any = None, mode: str | None = None,
                 on_copy: Callable[[str, str], Any] | None = None, computes: bool = True,
                 cache: ListCache | None = None) -> None:
        """`model`: a LanguageModel to use instead of loading the configured one (the
        evaluation shares one); `mode`: rerank | generate instead of KAIROS_LLM_MODE;
        `computes`: False in a process that only serves the lists another computes (a
        follower, with the lists shared through `cache`: Redis)."""
        self.engine = engine
        self.settings: Settings = engine.settings
        self.mode = mode or self.settings.llm_mode
        self._added_weight = False
        self.on_ready = on_ready
        self.on_copy = on_copy  # (notification id, text): a notification's body, written before it goes
        self.computes = computes
        self.cache: ListCache = cache if cache is not None else LlmListCache()
        self.worker = CoalescingWorker(self._compute, capacity=self.settings.llm_queue)
        self.state = "starting"
        self.error: str | None = None
        self.model: Any = model
        self._given = model is not None
        self._recommender: LlmRecommender | None = None
        self._catalog_size = -1
        self._event_at: dict[str, float] = {}  # user -> monotonic time of their latest event
        self._latencies: deque[float] = deque(maxlen=LATENCIES)
        self._model_seconds: deque[float] = deque(maxlen=LATENCIES)
        self._lock = threading.Lock()
        self.source = LlmSource(self)
        self.explainer = CoalescingWorker(self._explain, capacity=self.settings.llm_queue, name="kairos-llm-words")
        self._sentences: OrderedDict[str, tuple[int, str | None]] = OrderedDict()  # key -> (position, sentence)
        self.grounded = self.rejected = 0

    # -- lifecycle ------------------------------------------------------------------------

    def attach(self) -> None:
        """Join the engine: its listener, its `llm` source (generate) or list rule (rerank)."""
        engine = self.engine
        engine.listeners.add(self)
        engine.sources["llm"] = self.source
        if self.mode == "rerank":
            engine.list_rules.append(self)
        elif "llm" not in self.settings.source_weights:
            self.settings.source_weights = {**self.settings.source_weights, "llm": self.settings.llm_weight}
            self._added_weight = True

    def detach(self) -> None:
        engine = self.engine
        if self in engine.list_rules:
            engine.list_rules.remove(self)
        if engine.sources.get("llm") is self.source:
            del engine.sources["llm"]
        if self._added_weight:
            self.settings.source_weights = {k: v for k, v in self.settings.source_weights.items() if k != "llm"}
            self._added_weight = False
        try:
            engine.listeners.remove(self)
        except ValueError:
            pass

    def start(self) -> None:
        self.attach()
        if not self.computes:
            self.state = "following"  # serves what the leader computes
            return
        self.worker.start(before=self._load)
        self.explainer.start()

    def stop(self) -> None:
        if self.computes:
            self.worker.stop()
            self.explainer.stop()
        self.detach()
        close = getattr(self.model, "close", None)
        if close is not None and not self._given:
            close()

    def _load(self) -> None:
        if self.model is None:
            from kairos.llm.factory import load_model

            started = time.perf_counter()
            try:
                self.model = load_model(self.settings)
            except ModelUnavailable as error:
                self.state, self.error = "unavailable", str(error)
                log.warning("the language model is off: %s", error)
                raise
            log.info("language model %s loaded in %.1fs", self.model.name, time.perf_counter() - started)
        self.state = "ready"

    # -- the engine tells us --------------------------------------------------------------

    def events_ingested(self, records: Sequence[EventRecord]) -> None:
        if not self.computes:
            return
        now = time.monotonic()
        users = {r.user_id for r in records}
        with self._lock:
            for user_id in users:
                self._event_at[user_id] = now
        self.worker.submit(sorted(users))

    def items_upserted(self, records: Sequence[ItemRecord]) -> None:
        self._catalog_size = -1  # titles changed: the generate trie is rebuilt on next use

    def users_upserted(self, records: Sequence[UserRecord]) -> None:
        pass

    def user_forgotten(self, user_id: str) -> None:
        self.cache.forget(user_id)
        with self._lock:
            self._event_at.pop(user_id, None)

    # -- computing a list (the worker's thread) -------------------------------------------

    def refresh(self, user_id: str) -> LlmList | None:
        """Compute the user's list now, in this thread (the worker does this; so does the
        evaluation, to serve exactly what a request would see)."""
        if self.model is None:
            self._load()
        return self._compute(user_id)

    def _compute(self, user_id: str) -> LlmList | None:
        engine = self.engine
        with engine.lock:
            user = engine.state.users.get(user_id)
            if user is None:
                return None
            position = user.event_count
            now = engine.clock.now()
            titles = engine.catalog.titles
            ids = engine.catalog.ids
            steps = steps_of(user.recent, titles, ids, now)
        recommender = self._current_recommender()
        started = time.perf_counter()
        if self.mode == "rerank":
            served = engine.recommend(user_id, self.settings.llm_candidates, apply_rules=False)
            head = [engine.catalog.index[i.item_id] for i in served.items]
            order = recommender.rerank(steps, head)
        else:
            with engine.lock:
                context = engine.user_context(user_id)
                exclude = set(np.flatnonzero(~context.allowed).tolist())
            order = recommender.generate(steps, GENERATED, exclude)
        seconds = time.perf_counter() - started
        entry = LlmList(position, tuple(ids[i] for i in order), self.mode, time.time(), seconds)
        self.cache.put(user_id, entry)
        with engine.lock:
            current = engine.state.users.get(user_id)
            still_latest = current is not None and current.event_count == position
        with self._lock:
            self._model_seconds.append(seconds)
            at = self._event_at.get(user_id)
            if at is not None and still_latest:
                self._latencies.append(time.monotonic() - at)
        if self.on_ready is not None:
            self.on_ready(user_id)
        return entry

    def _explain(self, key: str) -> None:
        if self.model is None or self.state != "ready":
            return  # not loaded yet: the next request asks again
        user_id, item_id, *notification = key.split(SEPARATOR)
        engine = self.engine
        with engine.lock:
            user = engine.state.users.get(user_id)
            item = engine.catalog.index.get(item_id)
            if user is None or item is None:
                return
            position, now = user.event_count, engine.clock.now()
            titles, ids = engine.catalog.titles, engine.catalog.ids
            steps = steps_of(user.recent, titles, ids, now)
            title = titles[item] or item_id
            catalogue = [t for t in titles if t]
        sentence = first_sentence(self.model.write(explain_prompt(steps, title), SENTENCE_TOKENS))
        ok = grounded(sentence, [title, *(s.title for s in steps)], catalogue)
        with self._lock:
            if ok:
                self.grounded += 1
            else:
                self.rejected += 1
            cached = f"{user_id}{SEPARATOR}{item_id}"
            self._sentences[cached] = (position, sentence if ok else None)
            self._sentences.move_to_end(cached)
            while len(self._sentences) > SENTENCES_KEPT:
                self._sentences.popitem(last=False)
        if ok and notification and self.on_copy is not None:
            self.on_copy(notification[0], sentence)

    def write_copy(self, notifications: Sequence[tuple[str, str, str]]) -> None:
        """Queue the text of notifications due later: (notification id, user, item)."""
        self.explainer.submit([f"{user}{SEPARATOR}{item}{SEPARATOR}{nid}" for nid, user, item in notifications])

    def explanations(self, user_id: str, item_ids: Sequence[str]) -> dict[str, str]:
        """The model's grounded sentences written for the user's latest event, by item;
        the items without one are queued (a later request gets them)."""
        with self.engine.lock:
            user = self.engine.state.users.get(user_id)
            position = user.event_count if user is not None else 0
        found, missing = {}, []
        with self._lock:
            for item_id in list(item_ids)[:EXPLAINED]:
                key = f"{user_id}{SEPARATOR}{item_id}"
                known = self._sentences.get(key)
                if known is not None and known[0] == position:
                    if known[1]:
                        found[item_id] = known[1]
                else:
                    missing.append(key)
        if missing and user is not None and self.computes:
            self.explainer.submit(missing)
        return found

    def _current_recommender(self) -> LlmRecommender:
        size = len(self.engine.catalog)
        if self._recommender is None or size != self._catalog_size:
            self._recommender = LlmRecommender(self.model, list(self.engine.catalog.titles),
                                               self.settings.llm_candidates, self.settings.llm_blend)
            self._catalog_size = size
        return self._recommender

    # -- serving (the request path: no model call here) -----------------------------------

    def fresh(self, ctx: UserContext) -> LlmList | None:
        return self.cache.fresh(ctx.user_id, ctx.user.event_count if ctx.user is not None else 0)

    def apply(self, ctx: UserContext, chosen: Ranked, fused: Fused, n: int) -> Ranked:
        """Rerank mode's list rule: the model's order of the served head, if fresh."""
        entry = self.fresh(ctx)
        if entry is None:
            return chosen
        index = self.engine.catalog.index
        known = {item: (score, sources) for item, score, sources in chosen}
        head: Ranked = []
        for item_id in entry.items:
            item = index.get(item_id)
            if item is None or not ctx.allowed[item]:
                continue
            score, sources = known.get(item, (fused.score(item), fused.sources_of(item)))
            head.append((item, score, [*sources, "llm"] if "llm" not in sources else sources))
        placed = {item for item, _, _ in head}
        return (head + [c for c in chosen if c[0] not in placed])[:n]

    def status(self) -> dict[str, Any]:
        with self._lock:
            latencies = np.array(self._latencies) * 1000
            model_s = np.array(self._model_seconds) * 1000

        def pct(values: np.ndarray) -> dict[str, float] | None:
            if not len(values):
                return None
            return {f"p{q}": round(float(np.percentile(values, q)), 1) for q in (50, 99)}

        return {"backend": self.settings.llm, "model": getattr(self.model, "name", None), "mode": self.mode,
                "state": self.state, "error": self.error, "queue": self.worker.depth,
                "computed": self.worker.done, "failed": self.worker.failed, "dropped": self.worker.dropped,
                "cached_users": len(self.cache), "event_to_list_ms": pct(latencies), "model_ms": pct(model_s),
                "explanations": {"queue": self.explainer.depth, "grounded": self.grounded,
                                 "rejected": self.rejected}}


class LlmSource:
    """Generate mode's `llm` source: the model's fresh list for the user, in its order."""

    name = "llm"

    def __init__(self, service: LlmService) -> None:
        self.service = service

    def candidates(self, ctx: UserContext, k: int) -> Candidates:
        entry = self.service.fresh(ctx)
        if entry is None or entry.mode != "generate":
            return Candidates.empty()
        index = self.service.engine.catalog.index
        items = [i for i in (index.get(x) for x in entry.items) if i is not None and ctx.allowed[i]][:k]
        return Candidates(np.array(items, dtype=np.int64), 1.0 / (1.0 + np.arange(len(items))))

    def explain(self, ctx: UserContext, item: int) -> str | None:
        user = ctx.user
        if user is None or not user.recent:
            return "the language model's pick"
        last = user.recent[-1]
        title = self.service.engine.catalog.titles[last.item] or self.service.engine.catalog.ids[last.item]
        return f"the language model's pick after you {action_phrase(last.type, last.value)} '{title}'"
