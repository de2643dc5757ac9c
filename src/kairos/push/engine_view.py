"""The small interface push reads the engine through: the one module of push that knows
the engine's insides. Everything else in push sees users, items and scores."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from kairos.schema import Event, Recommendations
from kairos.sources.base import action_phrase
from kairos.state.users import SequenceStep, UserState
from kairos.store.base import ItemRecord

if TYPE_CHECKING:
    from kairos.engine import Engine
    from kairos.sources.sequential import ServedSequential
    from kairos.state.semantic import SemanticState


REASON_STEPS = 20  # latest positive visits searched for the one that explains a notification


class EngineView:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def lock(self) -> threading.RLock:
        return self.engine.lock

    def now(self) -> float:
        return self.engine.clock.now()

    # -- users ----------------------------------------------------------------------------

    def user_ids(self) -> list[str]:
        with self.lock:
            return list(self.engine.state.users)

    def user(self, user_id: str) -> UserState | None:
        """Call with the lock held."""
        return self.engine.state.users.get(user_id)

    def steps(self, user_id: str) -> list[SequenceStep]:
        with self.lock:
            user = self.engine.state.users.get(user_id)
            return list(user.recent) if user is not None else []

    def interested(self, key: int, since: float, types: frozenset[str]) -> list[str]:
        """Users who showed interest in the item (`types`) since `since` and never bought it."""
        out = []
        with self.lock:
            for user_id, user in self.engine.state.users.items():
                if key not in user.seen:
                    continue
                steps = [s for s in user.recent if s.item == key]
                if any(s.type == "purchase" for s in steps):
                    continue
                if any(s.type in types and s.timestamp >= since for s in steps):
                    out.append(user_id)
        return out

    def address(self, user_id: str) -> str | None:
        """The user's `email` attribute, if any (the email channel's address)."""
        record = self.engine.store.get_user(user_id)
        email = record.attributes.get("email") if record is not None else None
        return email if isinstance(email, str) and "@" in email else None

    # -- items ----------------------------------------------------------------------------

    def item(self, item_id: str) -> ItemRecord | None:
        return self.engine.store.get_item(item_id)

    def item_key(self, item_id: str) -> int | None:
        return self.engine.catalog.index.get(item_id)

    def item_id(self, key: int) -> str:
        return self.engine.catalog.ids[key]

    def title(self, key: int) -> str:
        catalog = self.engine.catalog
        return catalog.titles[key] or catalog.ids[key]

    def available(self, key: int) -> bool:
        return bool(self.engine.catalog.available[key])

    def n_items(self) -> int:
        return len(self.engine.catalog)

    def popularity(self, key: int) -> float:
        with self.lock:
            scores = self.engine.state.popularity.item_scores(len(self.engine.catalog), self.now())
        return float(scores[key]) if key < len(scores) else 0.0

    # -- what the models say --------------------------------------------------------------

    @property
    def semantic(self) -> SemanticState | None:
        return self.engine.semantic

    def sequential(self) -> ServedSequential | None:
        return self.engine.state.sequential

    def covisit_column(self, key: int) -> tuple[np.ndarray, np.ndarray]:
        """Items a and P(next = key | a), for co-visitation scores of one item."""
        with self.lock:
            sources, shares = self.engine.state.covisit.column(key)
        return np.asarray(sources, dtype=np.int64), np.asarray(shares, dtype=np.float64)

    def recommend(self, user_id: str, n: int) -> Recommendations:
        return self.engine.recommend(user_id, n)

    def complements(self, key: int, n: int) -> list[str]:
        """Items often chosen right after this one (co-visitation)."""
        similar = self.engine.similar(self.engine.catalog.ids[key], n, method="covisit")
        return [item.item_id for item in similar.items if "covisit" in item.sources]

    def reason(self, user_id: str, key: int) -> str:
        """'because you bought 'Espresso beans'': of the user's latest positive visits the one
        closest to the item (by text, else by the behaviour model), or their stated interests."""
        semantic = self.engine.semantic
        served = self.engine.state.sequential
        target = semantic.item_vector(key) if semantic is not None else None
        with self.lock:
            user = self.engine.state.users.get(user_id)
            steps = ([s for s in reversed(user.recent[-4 * REASON_STEPS:]) if s.weight > 0 and s.item != key]
                     [:REASON_STEPS] if user else [])
            stated = semantic.stated.get(user_id) if semantic is not None else None
            stated_text = semantic.stated_text.get(user_id, "") if semantic is not None else ""
        best, best_score = None, -2.0
        if steps and target is not None and semantic is not None and semantic.index is not None:
            vectors = semantic.index.vectors_of([s.item for s in steps])
            scores = np.where(np.abs(vectors).sum(1) > 0, vectors @ target, -2.0)
            if float(scores.max()) > -2.0:
                best, best_score = steps[int(np.argmax(scores))], float(scores.max())
        elif steps and served is not None and served.model_index(key) > 0:
            table = served.item_vectors()
            indices = [served.model_index(s.item) for s in steps]
            scores = np.where(np.array(indices) > 0, table[indices] @ table[served.model_index(key)], -np.inf)
            if np.isfinite(scores.max()):
                best = steps[int(np.argmax(scores))]
        if stated is not None and target is not None and float(stated @ target) > best_score:
            return f"because it matches your interests: “{stated_text[:60]}{'…' if len(stated_text) > 60 else ''}”"
        if best is None:
            return "popular with people like you"
        return f"because you {action_phrase(best.type, best.value)} '{self.title(best.item)}'"

    # -- writes ---------------------------------------------------------------------------

    def ingest(self, events: Sequence[Event]) -> int:
        return self.engine.ingest(events)
