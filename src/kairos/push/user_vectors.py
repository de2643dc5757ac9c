"""Every user as a few cached rows, so one item is scored for all users in one matrix
product instead of one request per user.

Per user: their semantic profile (unit vector), the behaviour model's query vector
with its softmax normaliser and latest items (see TrainedModel.user_queries), their
latest visits with weights (co-visitation seeds), their event count, last event time
and the hours of day they are active in (send-time optimisation). Events mark users dirty; `refresh` recomputes dirty rows (semantic and
co-visitation rows at once; behaviour-model rows in batches, up to a budget per call,
so a burst of events delays no decision by more than that budget).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import numpy as np

from kairos.push.engine_view import EngineView
from kairos.push.policy import best_local_hour, hour_weights
from kairos.state.users import SequenceStep

SEEDS = 5  # latest distinct visits kept as co-visitation seeds (as the covisit source)
LOCK_CHUNK = 2000  # users read per hold of the engine lock
MODEL_BATCH = 256


def _grown(array: np.ndarray, rows: int, fill: float | int = 0) -> np.ndarray:
    out = np.full((rows, *array.shape[1:]), fill, dtype=array.dtype)
    out[: len(array)] = array
    return out


class UserVectors:
    def __init__(self, view: EngineView) -> None:
        self.view = view
        self._lock = threading.RLock()
        self.ids: list[str] = []
        self.row: dict[str, int] = {}
        self.alive = np.zeros(0, dtype=bool)
        self.semantic: np.ndarray | None = None  # (n, dim) unit rows, zeros for none
        self.has_semantic = np.zeros(0, dtype=bool)
        self.seeds = np.full((0, SEEDS), -1, dtype=np.int64)
        self.seed_weights = np.zeros((0, SEEDS), dtype=np.float32)
        self.events = np.zeros(0, dtype=np.int64)
        self.last_event = np.zeros(0, dtype=np.float64)
        self.hours = np.zeros((0, 24), dtype=np.float32)  # policy.hour_weights: when the user is active
        self.query: np.ndarray | None = None  # (n, d)
        self.lse = np.zeros(0, dtype=np.float64)  # nan: the model cannot read this user
        self.recent: np.ndarray | None = None  # (n, lags) model indices
        self.model_version: str | None = None
        self._dirty: set[str] = set()
        self._model_stale: set[int] = set()
        self._in_flight = 0  # taken off the dirty set by a refresh not finished yet

    def __len__(self) -> int:
        return len(self.ids)

    # -- keeping up -----------------------------------------------------------------------

    def mark(self, user_ids: Iterable[str]) -> None:
        with self._lock:
            self._dirty.update(user_ids)

    def mark_all(self) -> None:
        self.mark(self.view.user_ids())

    @property
    def pending(self) -> int:
        """Users whose rows are out of date (any part)."""
        with self._lock:
            return len(self._dirty) + len(self._model_stale) + self._in_flight

    def active_since(self, since: float) -> tuple[list[str], np.ndarray]:
        """Users with an event since `since`, and their hour-of-day weights."""
        with self._lock:
            count = len(self.ids)
            rows = np.flatnonzero(self.alive[:count] & (self.last_event[:count] >= since)
                                  & (self.hours[:count].sum(1) > 0))
            return [self.ids[r] for r in rows.tolist()], self.hours[rows].copy()

    def best_hour(self, user_id: str, tz: str, default: int, now: float) -> int:
        """The user's most active local hour (policy.best_local_hour); `default` if unknown."""
        with self._lock:
            row = self.row.get(user_id)
            weights = self.hours[row].copy() if row is not None else np.zeros(24)
        return best_local_hour(weights, tz, default, now)

    def forget(self, user_id: str) -> None:
        with self._lock:
            row = self.row.get(user_id)
            if row is not None:
                self.alive[row] = False
                self.has_semantic[row] = False
                self.hours[row] = 0.0
                self.lse[row] = np.nan
                self.seeds[row] = -1
            self._dirty.discard(user_id)

    def refresh(self, model_budget: int | None = None) -> None:
        """Bring dirty rows up to date; at most `model_budget` behaviour-model rows (None:
        all of them)."""
        served = self.view.sequential()
        version = served.version if served is not None else None
        with self._lock:
            dirty, self._dirty = list(self._dirty), set()
            self._in_flight += len(dirty)
            if version != self.model_version:
                self.model_version = version
                self.query = self.recent = None
                self.lse = np.full(len(self.alive), np.nan)
                self._model_stale = set(range(len(self.ids))) if version is not None else set()
        for start in range(0, len(dirty), LOCK_CHUNK):
            chunk = dirty[start:start + LOCK_CHUNK]
            try:
                self._refresh_rows(chunk, version is not None)
            finally:
                with self._lock:
                    self._in_flight -= len(chunk)
        if version is not None:
            self._refresh_model(model_budget)

    def _refresh_rows(self, user_ids: list[str], with_model: bool) -> None:
        view = self.view
        semantic = view.semantic
        with view.lock, self._lock:
            for user_id in user_ids:
                user = view.user(user_id)
                row = self._row(user_id)
                if user is None:
                    self.alive[row] = False
                    continue
                self.alive[row] = True
                self.events[row] = user.event_count
                self.last_event[row] = user.recent[-1].timestamp if user.recent else 0.0
                self.hours[row] = hour_weights(np.fromiter((s.timestamp for s in user.recent), dtype=np.float64,
                                                           count=len(user.recent)))
                visits = user.recent_visits(SEEDS)
                self.seeds[row] = -1
                self.seed_weights[row] = 0.0
                for rank, step in enumerate(visits):
                    self.seeds[row, rank] = step.item
                    self.seed_weights[row, rank] = 1.0 / (1 + rank)
                profile = semantic.profile(user_id) if semantic is not None else None
                if profile is not None:
                    if self.semantic is None:
                        self.semantic = np.zeros((len(self.alive), len(profile)), dtype=np.float32)
                    self.semantic[row] = profile
                    self.has_semantic[row] = True
                else:
                    self.has_semantic[row] = False
                if with_model:
                    self._model_stale.add(row)

    def _refresh_model(self, budget: int | None) -> None:
        served = self.view.sequential()
        if served is None:
            return
        with self._lock:
            rows = sorted(self._model_stale)[: budget if budget is not None else None]
            self._model_stale.difference_update(rows)
        for start in range(0, len(rows), MODEL_BATCH):
            batch = rows[start:start + MODEL_BATCH]
            with self.view.lock:
                steps: list[list[SequenceStep]] = []
                for row in batch:
                    user = self.view.user(self.ids[row])
                    steps.append(list(user.recent) if user is not None else [])
            queries, lse, recent = served.user_queries(steps)
            with self._lock:
                if served.version != self.model_version:
                    return  # swapped meanwhile: the next refresh starts over
                if self.query is None or self.recent is None:
                    self.query = np.zeros((len(self.alive), queries.shape[1]), dtype=np.float32)
                    self.recent = np.zeros((len(self.alive), recent.shape[1]), dtype=np.int64)
                self.query[batch], self.lse[batch], self.recent[batch] = queries, lse, recent

    def _row(self, user_id: str) -> int:
        row = self.row.get(user_id)
        if row is not None:
            return row
        row = len(self.ids)
        self.ids.append(user_id)
        self.row[user_id] = row
        if row >= len(self.alive):
            size = max(1024, 2 * len(self.alive))
            self.alive = _grown(self.alive, size, False)
            self.has_semantic = _grown(self.has_semantic, size, False)
            self.seeds = _grown(self.seeds, size, -1)
            self.seed_weights = _grown(self.seed_weights, size, 0.0)
            self.events = _grown(self.events, size, 0)
            self.last_event = _grown(self.last_event, size, 0.0)
            self.hours = _grown(self.hours, size, 0.0)
            self.lse = _grown(self.lse, size, np.nan)
            if self.semantic is not None:
                self.semantic = _grown(self.semantic, size, 0.0)
            if self.query is not None and self.recent is not None:
                self.query = _grown(self.query, size, 0.0)
                self.recent = _grown(self.recent, size, 0)
        return row
