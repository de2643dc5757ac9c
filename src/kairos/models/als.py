"""Matrix factorisation on implicit feedback (Hu, Koren, Volinsky, ICDM 2008) with the
`implicit` library's CPU ALS.

Confidence of a (user, item) pair is 1 + alpha x the summed positive event weights.
Item factors are fitted in the background on the whole log; a user's factors are folded
in at request time from their live sequence (`recalculate_user`: one least-squares
solve against the fixed item factors), so a user who arrived after the fit, or acted a
moment ago, is served from what they did.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from threadpoolctl import threadpool_limits

from kairos.store.base import EventRecord

Weight = Callable[[str, float | None], float]


@dataclass(frozen=True)
class AlsConfig:
    factors: int = 64
    regularization: float = 0.05
    alpha: float = 2.0
    iterations: int = 15
    threads: int = 0  # 0: every core (a background fit)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> AlsConfig:
        return cls(**{k: v for k, v in value.items() if k in cls.__dataclass_fields__})


@dataclass
class AlsModel:
    item_factors: np.ndarray  # (n_items, factors), by catalogue index at fit time
    config: AlsConfig
    version: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("als-%Y%m%d-%H%M%S-")
                         + uuid.uuid4().hex[:4])
    users: int = 0
    events: int = 0
    fit_seconds: float = 0.0
    _solver: Any = None

    @classmethod
    def fit(cls, events: Iterable[EventRecord], item_index: dict[str, int], n_items: int,
            weight: Weight, config: AlsConfig | None = None) -> AlsModel:
        """Fit on events whose items are in `item_index` (catalogue indices)."""
        from implicit.cpu.als import AlternatingLeastSquares

        config = config or AlsConfig()
        started = time.perf_counter()
        users: dict[str, int] = {}
        rows, cols, values = [], [], []
        count = 0
        for event in events:
            w = weight(event.type, event.value)
            item = item_index.get(event.item_id)
            if w <= 0 or item is None:
                continue
            rows.append(users.setdefault(event.user_id, len(users)))
            cols.append(item)
            values.append(w)
            count += 1
        matrix = sparse.csr_matrix((np.asarray(values, dtype=np.float32), (rows, cols)),
                                   shape=(max(len(users), 1), n_items))  # duplicates are summed
        matrix.data = 1.0 + config.alpha * matrix.data
        with threadpool_limits(1, "blas"):  # implicit's own threads, not BLAS's inside each of them
            solver = AlternatingLeastSquares(factors=config.factors, regularization=config.regularization,
                                             alpha=1.0, iterations=config.iterations, num_threads=config.threads,
                                             random_state=0)
            solver.fit(matrix, show_progress=False)
        model = cls(np.ascontiguousarray(solver.item_factors, dtype=np.float32), config,
                    users=len(users), events=count, fit_seconds=time.perf_counter() - started)
        model._solver = solver
        return model

    @property
    def n_items(self) -> int:
        return len(self.item_factors)

    def user_vector(self, items: Sequence[int], weights: Sequence[float]) -> np.ndarray | None:
        """The user's factors folded in from (catalogue index, event weight) pairs."""
        pairs = [(i, w) for i, w in zip(items, weights, strict=True) if w > 0 and i < self.n_items]
        if not pairs:
            return None
        cols = np.fromiter((i for i, _ in pairs), dtype=np.int64, count=len(pairs))
        data = 1.0 + self.config.alpha * np.fromiter((w for _, w in pairs), dtype=np.float32, count=len(pairs))
        row = sparse.csr_matrix((data, (np.zeros(len(pairs), dtype=np.int64), cols)), shape=(1, self.n_items))
        return np.asarray(self.solver().recalculate_user(0, row), dtype=np.float32).reshape(-1)

    def scores(self, user: np.ndarray, n_items: int) -> np.ndarray:
        """Scores over the live catalogue; items newer than the fit have none (0)."""
        out = np.zeros(n_items, dtype=np.float64)
        known = min(n_items, self.n_items)
        out[:known] = self.item_factors[:known] @ user
        return out

    def solver(self) -> Any:
        if self._solver is None:
            from implicit.cpu.als import AlternatingLeastSquares

            with threadpool_limits(1, "blas"):
                solver = AlternatingLeastSquares(factors=self.config.factors,
                                                 regularization=self.config.regularization, alpha=1.0, num_threads=1)
            solver.item_factors = self.item_factors
            self._solver = solver
        return self._solver

    # -- artefact --------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "als_items.npy", self.item_factors)
        meta = {"version": self.version, "users": self.users, "events": self.events,
                "fit_seconds": self.fit_seconds, "config": asdict(self.config)}
        (folder / "als.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, folder: Path) -> AlsModel:
        meta = json.loads((folder / "als.json").read_text())
        return cls(np.load(folder / "als_items.npy"), AlsConfig.from_json(meta["config"]), meta["version"],
                   meta["users"], meta["events"], meta["fit_seconds"])
