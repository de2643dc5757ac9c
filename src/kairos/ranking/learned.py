"""The learned ranker: LightGBM lambdarank over the candidate pool's features.

It orders what the sources proposed; it proposes nothing itself, so an item no
source found is never served by it (recall is the sources' job, order the ranker's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kairos.ranking.features import CATEGORICAL, FEATURES, Pool

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "lambdarank", "metric": "ndcg", "eval_at": [10], "lambdarank_truncation_level": 20,
    "learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 50, "feature_fraction": 0.8,
    "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0, "verbose": -1, "num_threads": 0, "seed": 0,
}
MAX_ROUNDS = 400
EARLY_STOPPING = 30
SERVING_THREADS = 1  # a request's pool is a few hundred rows: threads cost more than they save


class LearnedRanker:
    def __init__(self, booster: Any) -> None:
        self.booster = booster
        if list(booster.feature_name()) != list(FEATURES):
            raise ValueError("the ranker was trained on other features than this version computes")

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, groups: np.ndarray,
            valid: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
            params: dict[str, Any] | None = None, rounds: int | None = None) -> tuple[LearnedRanker, int]:
        """Train (early-stopped on `valid` when given); returns the ranker and its rounds."""
        import lightgbm as lgb

        params = {**DEFAULT_PARAMS, **(params or {})}
        train = lgb.Dataset(features, labels, group=groups, feature_name=list(FEATURES),
                            categorical_feature=list(CATEGORICAL), free_raw_data=False)
        sets, callbacks = [], []
        if valid is not None:
            sets = [lgb.Dataset(valid[0], valid[1], group=valid[2], reference=train)]
            callbacks = [lgb.early_stopping(EARLY_STOPPING, verbose=False)]
        booster = lgb.train(params, train, num_boost_round=rounds or MAX_ROUNDS, valid_sets=sets,
                            callbacks=callbacks)
        best = booster.best_iteration if valid is not None and booster.best_iteration > 0 else booster.current_iteration()
        return cls(booster), int(best)

    def score(self, pool: Pool) -> np.ndarray:
        if not len(pool.items):
            return np.empty(0)
        return np.asarray(self.booster.predict(pool.features, num_threads=SERVING_THREADS), dtype=np.float64)

    def importance(self) -> dict[str, float]:
        gains = self.booster.feature_importance("gain")
        total = float(gains.sum()) or 1.0
        return {name: round(float(g) / total, 4) for name, g in zip(FEATURES, gains, strict=True) if g > 0}

    def save(self, path: Path) -> None:
        self.booster.save_model(str(path))

    @classmethod
    def load(cls, path: Path) -> LearnedRanker:
        import lightgbm as lgb

        return cls(lgb.Booster(model_file=str(path)))
