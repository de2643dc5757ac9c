"""What orders a served list: the ranking model the engine installs.

Three regimes, by how much the log can teach (docs/ranking.md):
- `learned`: the LightGBM ranker over the sources' candidates, when it was trained
  and beat fused ranks on held-out users;
- `fitted`: reciprocal-rank fusion with weights fitted on the log's own latest
  events, when there are too few of them to train the ranker (or it did not win);
- `configured`: fusion with `source_weights`, when even that cannot be fitted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from kairos.models.als import AlsModel
from kairos.ranking.features import FEATURES_VERSION, pool_features
from kairos.ranking.fusion import Fused
from kairos.ranking.learned import LearnedRanker
from kairos.sources.base import UserContext
from kairos.state.online import OnlineState
from kairos.training.registry import ModelRegistry, _write_atomically

if TYPE_CHECKING:
    from kairos.store.artefacts import PostgresArtefacts

log = logging.getLogger(__name__)
_REFUSED: set[str] = set()  # versions trained on other features, said once

Mode = Literal["learned", "fitted", "configured"]
CURRENT = "CURRENT"
META = "ranking.json"


@dataclass
class RankingModel:
    version: str
    mode: Mode
    weights: dict[str, float]  # the fusion weights of the `fitted`/`configured` regimes
    ranker: LearnedRanker | None = None
    als: AlsModel | None = None
    sequential_version: str | None = None  # features read this behaviour model's scores
    report: dict[str, Any] = field(default_factory=dict)  # examples, held-out NDCG of each regime, times

    def rescore(self, state: OnlineState, ctx: UserContext, fused: Fused) -> Fused:
        """The fusion with its scores replaced by the ranker's, over the same candidates
        (positive, so the fused list's helpers still read them as scores)."""
        if self.mode != "learned" or self.ranker is None:
            return fused
        pool = pool_features(state, ctx, fused.ranked, fused.items)
        if not len(pool.items):
            return fused
        predicted = self.ranker.score(pool)
        fused_share = fused.scores / max(float(fused.scores.max()), 1e-12)
        # A few hundred trees' leaves tie many candidates: the fused ranks order those.
        return fused.rescored(np.exp(predicted - predicted.max()) + 1e-6 * fused_share + 1e-9)

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "mode": self.mode, "weights": self.weights,
                "sequential_version": self.sequential_version,
                "als": None if self.als is None else {"version": self.als.version, "users": self.als.users,
                                                       "events": self.als.events,
                                                       "fit_seconds": round(self.als.fit_seconds, 2)},
                **self.report}


def new_version() -> str:
    from datetime import datetime

    # Microseconds: names sort by age, and the registry keeps the newest by name.
    return datetime.now(UTC).strftime("rank-%Y%m%d-%H%M%S-%f-") + uuid.uuid4().hex[:4]


class RankingRegistry:
    """<root>/<version>/{ranking.json, ranker.txt, als_items.npy, als.json}; <root>/CURRENT.
    Shared through PostgreSQL as the behaviour model's registry is (training/registry.py)."""

    KIND = "ranking"

    def __init__(self, root: Path, keep: int = 3, shared: PostgresArtefacts | None = None) -> None:
        self.root = Path(root)
        self.keep = keep
        self.shared = shared

    @classmethod
    def beside(cls, models: ModelRegistry) -> RankingRegistry:
        """The ranking models trained for a behaviour model registry's versions."""
        return cls(models.root / "ranking", shared=models.shared)

    def publish(self, model: RankingModel) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{model.version}.{uuid.uuid4().hex[:6]}"
        tmp.mkdir()
        if model.ranker is not None:
            model.ranker.save(tmp / "ranker.txt")
        if model.als is not None:
            model.als.save(tmp)
        meta = {"version": model.version, "mode": model.mode, "weights": model.weights,
                "sequential_version": model.sequential_version, "report": model.report,
                "features_version": FEATURES_VERSION}
        (tmp / META).write_text(json.dumps(meta, indent=1))
        final = self.root / model.version
        os.replace(tmp, final)
        if self.shared is not None:
            self.shared.publish(self.KIND, model.version, final, meta, self.keep)
        _write_atomically(self.root / CURRENT, model.version + "\n")
        self._prune()
        return final

    def current_version(self) -> str | None:
        if self.shared is not None:
            return self.shared.current(self.KIND)
        try:
            return (self.root / CURRENT).read_text().strip() or None
        except FileNotFoundError:
            return None

    def load(self, version: str | None = None) -> RankingModel | None:
        version = version or self.current_version()
        if version is None:
            return None
        path = self.root / version
        if not (path / META).exists() and self.shared is not None:
            self.shared.fetch(self.KIND, version, self.root)
        meta = json.loads((path / META).read_text())
        if (path / "ranker.txt").exists() and meta.get("features_version", 1) != FEATURES_VERSION:
            if version in _REFUSED:
                return None
            _REFUSED.add(version)
            log.warning("ranking model %s was trained on other features (version %s, now %s): not served "
                        "until one is trained for these", version, meta.get("features_version", 1), FEATURES_VERSION)
            return None
        ranker = LearnedRanker.load(path / "ranker.txt") if (path / "ranker.txt").exists() else None
        als = AlsModel.load(path) if (path / "als.json").exists() else None
        return RankingModel(meta["version"], meta["mode"], meta["weights"], ranker, als,
                            meta.get("sequential_version"), meta.get("report", {}))

    def versions(self) -> list[str]:
        if self.shared is not None:
            return [version for version, _ in self.shared.listed(self.KIND)]
        if not self.root.is_dir():
            return []
        return sorted((p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
                       and (p / META).exists()), reverse=True)

    def _prune(self) -> None:
        """This folder's old versions (the shared registry prunes its own on publish)."""
        current = self.current_version()
        for old in RankingRegistry(self.root, self.keep).versions()[self.keep:]:
            if old != current:
                shutil.rmtree(self.root / old, ignore_errors=True)

