"""Targeting: item -> the users likeliest to engage with it, each with a calibrated p.

One item is scored for every user at once from cached rows (UserVectors): the
semantic profile matrix times the item's text vector, the behaviour model's query
matrix times the item's key (plus its transition prior, minus each user's softmax
normaliser: a log-probability), co-visitation as a gather over each user's latest
visits. The calibrator turns the features into p. A brand-new item has no behaviour,
yet its text vector and the behaviour model's text projection score it, and its p
comes from the calibrator's cold map (fitted on items made new).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kairos.config import DAY
from kairos.push.calibration import COVISIT_FLOOR, FEATURES, SCREENED, SEQ_FLOOR, Calibrator
from kairos.push.engine_view import EngineView
from kairos.push.user_vectors import UserVectors

# Behaviour-model rows recomputed before a decision at most (the rest catch up in the background).
MODEL_BUDGET = 2048


@dataclass(slots=True)
class Target:
    user_id: str
    p: float


class Targeter:
    def __init__(self, view: EngineView, vectors: UserVectors, calibrator: Calibrator) -> None:
        self.view = view
        self.vectors = vectors
        self.calibrator = calibrator

    def calibrator_for(self, key: int) -> Calibrator:
        """The map for item `key`: the cold one while nobody has touched it."""
        return self.calibrator.for_item(self.view.popularity(key) == 0.0)

    def features(self, key: int, rows: np.ndarray) -> np.ndarray:
        """(len(rows), len(FEATURES)) for item `key` and the users in vector rows `rows`."""
        view, vectors = self.view, self.vectors
        rows = np.asarray(rows, dtype=np.int64)
        x = np.zeros((len(rows), len(FEATURES)), dtype=np.float32)
        x[:, 0] = SEQ_FLOOR
        semantic = view.semantic
        vector = semantic.item_vector(key) if semantic is not None else None
        n = len(vectors)
        # Products over the whole matrix, then the rows: gathering rows first copies the matrix.
        if vector is not None and vectors.semantic is not None:
            has = vectors.has_semantic[rows]
            x[:, 2] = np.where(has, (vectors.semantic[:n] @ vector)[rows], 0.0)
            x[:, 3] = has
        served = view.sequential()
        index = served.model_index(key) if served is not None else 0
        calibrator = self.calibrator_for(key)
        if calibrator.fitted and calibrator.meta.get("behaviour_model") is None:
            index = 0  # fitted without a behaviour model: its feature would be out of the fit's range
        if served is not None and index > 0 and vectors.query is not None and vectors.recent is not None \
                and vectors.model_version == served.version:
            keys = served.item_keys()
            if index < len(keys):
                lse = vectors.lse[rows]
                known = ~np.isnan(lse)
                logp = ((vectors.query[:n] @ keys[index])[rows]
                        + served.prior_columns(vectors.recent[rows], np.array([index]))[:, 0]
                        - np.where(known, lse, 0.0))
                x[:, 0] = np.where(known, np.clip(logp, SEQ_FLOOR, 0.0), SEQ_FLOOR)
                x[:, 1] = known
        sources, shares = view.covisit_column(key)
        covisit = np.zeros(len(rows))
        if len(sources):
            column = np.zeros(max(view.n_items(), int(sources.max()) + 1))
            column[sources] = shares
            seeds = vectors.seeds[rows]
            valid = seeds >= 0
            covisit = (column[np.where(valid, seeds, 0)] * vectors.seed_weights[rows] * valid).sum(1)
        x[:, 4] = np.log(covisit + COVISIT_FLOOR)
        x[:, 5] = np.log1p(vectors.events[rows])
        idle = np.maximum(view.now() - vectors.last_event[rows], 0.0) / DAY
        x[:, 6] = np.where(vectors.events[rows] > 0, np.log1p(idle), 0.0)
        x[:, 7] = np.log1p(view.popularity(key))
        return x

    def p(self, key: int, rows: np.ndarray) -> np.ndarray:
        return self.calibrator_for(key).p(self.features(key, rows))

    def audience(self, item_id: str, max_users: int, min_p: float = 0.0, min_similarity: float | None = None,
                 exclude: set[str] | None = None, exclude_touched: bool = True) -> list[Target]:
        """The best `max_users` users for the item with p >= `min_p` (and, given
        `min_similarity`, a semantic profile at least that close to the item's text), best
        first; users who already touched the item (`exclude_touched`) or are in `exclude` are
        left out."""
        key = self.view.item_key(item_id)
        if key is None or max_users <= 0:
            return []
        self.vectors.refresh(MODEL_BUDGET)
        rows = np.flatnonzero(self.vectors.alive[: len(self.vectors)])
        if not len(rows):
            return []
        features = self.features(key, rows)
        p = self.calibrator_for(key).ranked(features, max(SCREENED, 2 * max_users))
        fits = p >= min_p
        if min_similarity is not None and self.view.semantic is not None:
            fits &= (features[:, 3] > 0) & (features[:, 2] >= min_similarity)
        ranked = np.flatnonzero(fits)
        ranked = ranked[np.lexsort((rows[ranked], -p[ranked]))]
        # Only the best few are checked for having touched the item (a set lookup each):
        # checking all users would cost more than scoring them.
        chosen: list[int] = []
        for start in range(0, len(ranked), 2 * max_users + 100):
            chunk = ranked[start:start + 2 * max_users + 100]
            keep = self._eligible(rows[chunk], key, exclude or set(), exclude_touched)
            chosen.extend(chunk[keep].tolist())
            if len(chosen) >= max_users:
                break
        return [Target(self.vectors.ids[rows[i]], float(p[i])) for i in chosen[:max_users]]

    def score_users(self, item_id: str, user_ids: list[str]) -> list[Target]:
        """p of the item for each named user (unknown users: from the intercept)."""
        key = self.view.item_key(item_id)
        if key is None:
            return []
        self.vectors.mark([u for u in user_ids if u not in self.vectors.row])
        self.vectors.refresh(MODEL_BUDGET)
        rows = np.array([self.vectors.row.get(u, -1) for u in user_ids], dtype=np.int64)
        known = rows >= 0
        p = np.zeros(len(user_ids))
        if known.any():
            p[known] = self.p(key, rows[known])
        if (~known).any():
            x = np.zeros((1, len(FEATURES)), dtype=np.float32)
            x[0, 0], x[0, 4], x[0, 7] = SEQ_FLOOR, np.log(COVISIT_FLOOR), np.log1p(self.view.popularity(key))
            p[~known] = self.calibrator_for(key).p(x)[0]
        return [Target(u, float(v)) for u, v in zip(user_ids, p.tolist(), strict=True)]

    def score_items(self, user_id: str, item_ids: list[str]) -> list[float]:
        """p of each item for one user (reminders, next-best, digests)."""
        self.vectors.mark([user_id])
        self.vectors.refresh(MODEL_BUDGET)
        row = self.vectors.row.get(user_id)
        out = []
        for item_id in item_ids:
            key = self.view.item_key(item_id)
            if key is None or row is None:
                out.append(0.0)
            else:
                out.append(float(self.p(key, np.array([row]))[0]))
        return out

    def _eligible(self, rows: np.ndarray, key: int, exclude: set[str], exclude_touched: bool) -> np.ndarray:
        """A mask over `rows`: the users not excluded."""
        ids = self.vectors.ids
        keep = np.ones(len(rows), dtype=bool)
        if not exclude and not exclude_touched:
            return keep
        with self.view.lock:
            for i, row in enumerate(rows.tolist()):
                user_id = ids[row]
                if user_id in exclude:
                    keep[i] = False
                elif exclude_touched:
                    user = self.view.user(user_id)
                    keep[i] = user is not None and key not in user.seen
        return keep
