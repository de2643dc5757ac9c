"""Scores -> p: the probability that a user engages with an item within a week.

Targeting scores each (user, item) with features from every model: the behaviour
model's log-probability of the item as the user's next one, the cosine of the user's
semantic profile to the item's text, co-visitation from the user's latest visits, and
the user's activity and the item's popularity (FEATURES). A logistic regression maps
them to p; which features it fuses (SUBSETS) is chosen by how well each choice ranks
the users of held-out items. It is fitted on the event log (`fit_calibration`,
`kairos push calibrate`): the log is cut at its 80% quantile of event times, the
online state is rebuilt from the events before the cut, and for items chosen after
the cut the label of each user who had not touched the item is whether they engaged
with it (a positive event) within the week after the cut. Negatives are sampled per
item and weighted back, so the intercept stays a real base rate. Until a fit exists,
DEFAULT (a hand-set prior, see docs/push.md) gives p of the right order.

A p is organic engagement, not the effect of notifying: nobody was notified in the
log. Feedback (opens, clicks) enters the log as events, so refits learn from it.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kairos.config import DAY, Settings
from kairos.progress import progress
from kairos.store.base import EventRecord

FEATURES = ("seq_logp", "has_seq", "semantic", "has_semantic", "covisit", "log_events", "log_idle_days",
            "log_popularity")
ACTIVITY = ("log_events", "log_idle_days", "log_popularity")
# Feature subsets a fit chooses between (by held-out items); a feature left out gets 0.
SUBSETS: dict[str, tuple[str, ...]] = {
    "all": FEATURES,
    "semantic": ("semantic", "has_semantic", *ACTIVITY),
    "sequential": ("seq_logp", "has_seq", *ACTIVITY),
    "covisit": ("covisit", *ACTIVITY),
    "taste": ("seq_logp", "has_seq", "semantic", "has_semantic", "covisit"),
}
SEQ_FLOOR = -25.0  # log-probability standing in for "the behaviour model has no opinion"
COVISIT_FLOOR = 1e-4


@dataclass
class Calibrator:
    coef: list[float]
    intercept: float
    fitted: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def p(self, features: np.ndarray) -> np.ndarray:
        z = features.astype(np.float64) @ np.asarray(self.coef, dtype=np.float64) + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Calibrator:
        data = json.loads(text)
        if len(data["coef"]) != len(FEATURES):
            raise ValueError("calibration has other features than this version; refit it")
        return cls(**data)


# Until a service has fitted its own: a hand-set prior, not a fit. Taste first (text, then
# behaviour, then co-visitation), activity second, so a new shop's audiences follow what
# users did; the intercept puts p near the 0.2% per user, item and week that fits on
# ml-latest-small give (docs/push.md).
DEFAULT = Calibrator(coef=[0.12, 0.0, 2.5, 0.0, 0.25, 0.35, -0.4, 0.15], intercept=-6.0, fitted=False,
                     meta={"source": "hand-set prior (no fit on this log yet: kairos push calibrate)"})


def fit_calibration(store: Any, settings: Settings, registered: Any = None, *, holdout: float = 0.2,
                    window_s: float = 7 * DAY, max_items: int = 300, negatives: int = 50, seed: int = 0,
                    quiet: bool = False, per_user: bool = False, min_takers: int = 1,
                    retrain: dict[str, Any] | None = None) -> Calibrator:
    """Fit on the log of `store` as the module docstring says. `registered`: the behaviour
    model to score with (the one serving; it saw the whole log, so its feature is a little
    optimistic). `per_user`: cut each user's sequence at their own (1 - holdout) position
    and label by the rest of it (logs whose timestamps carry order only); `min_takers`:
    only items that many users took after the cut (to match an evaluation's selection);
    `retrain` (SeqRecConfig overrides, {} for the preset): instead of `registered`, train a
    behaviour model on the events before the inner cut, so its feature is as good in the
    fit as in serving (evaluation does; it costs a training).
    ValueError when the log is too small to say anything."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss, roc_auc_score

    from kairos.clock import SimulatedClock
    from kairos.engine import Engine
    from kairos.push.engine_view import EngineView
    from kairos.push.targeting import Targeter
    from kairos.push.user_vectors import UserVectors
    from kairos.schema import Item
    from kairos.store import SQLiteStore

    started = time.perf_counter()
    events: list[EventRecord] = [e for batch in store.iter_events() for e in batch]
    if len(events) < 100:
        raise ValueError(f"the log has {len(events)} events; calibration needs at least 100")
    if per_user:
        by_user: dict[str, list[EventRecord]] = defaultdict(list)
        for e in sorted(events, key=lambda e: e.timestamp):
            by_user[e.user_id].append(e)
        before, after = [], []
        for mine in by_user.values():
            at = max(1, int(len(mine) * (1 - holdout)))
            before += mine[:at]
            after += mine[at:]
        before.sort(key=lambda e: e.timestamp)
        cut = max(e.timestamp for e in before)
    else:
        times = np.array([e.timestamp for e in events])
        cut = float(np.quantile(times, 1 - holdout))
        before = [e for e in events if e.timestamp < cut]
        after = [e for e in events if cut <= e.timestamp <= cut + window_s]
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="kairos-calibration-") as scratch:
        scratch_settings = settings.model_copy(update={"db_path": Path(scratch) / "cut.db",
                                                       "model_dir": Path(scratch) / "models",
                                                       "sqlite_synchronous": "NORMAL"})
        engine = Engine(scratch_settings, store=SQLiteStore(scratch_settings.db_path, "NORMAL"),
                        clock=SimulatedClock(cut), rebuild=False)
        try:
            items = list(store.iter_items())
            engine.upsert_items([Item(item_id=i.item_id, title=i.title, text=i.text, categories=i.categories,
                                      attributes=i.attributes, created_at=i.created_at, available=True)
                                 for i in items])
            with progress("calibration: state at the cut", len(before), quiet=quiet) as advance:
                for start in range(0, len(before), 10_000):
                    engine.ingest_records(before[start:start + 10_000])
                    advance(len(before[start:start + 10_000]))
            if retrain is not None and registered is not None:
                from kairos.training.pipeline import NotEnoughData, as_registered, train_from_store

                embed = engine.semantic.embed if engine.semantic is not None else None
                try:
                    registered = as_registered(train_from_store(engine.store, engine.settings, embed,
                                                                overrides=retrain, quiet=quiet))
                except NotEnoughData:
                    registered = None
            if registered is not None:
                engine.install_model(registered)
            view = EngineView(engine)
            vectors = UserVectors(view)
            vectors.mark_all()
            vectors.refresh()
            targeter = Targeter(view, vectors, DEFAULT)
            touched: dict[str, set[int]] = defaultdict(set)
            with engine.lock:
                for user_id, user in engine.state.users.items():
                    touched[user_id] = {step.item for step in user.recent} | set(user.seen)
            takers: dict[str, set[str]] = defaultdict(set)
            for e in after:
                if settings.event_weight(e.type, e.value) > 0 and e.user_id in touched:
                    key = engine.catalog.index.get(e.item_id)
                    if key is not None and key not in touched[e.user_id]:
                        takers[e.item_id].add(e.user_id)
            chosen = sorted(item for item, users in takers.items() if len(users) >= min_takers)
            if len(chosen) < 5:
                raise ValueError(f"only {len(chosen)} items were taken up after the cut; too few to calibrate")
            if len(chosen) > max_items:
                chosen = sorted(rng.choice(chosen, max_items, replace=False).tolist())
            rows_all = np.flatnonzero(vectors.alive[: len(vectors)])
            xs, ys, ws, groups = [], [], [], []
            with progress("calibration: scoring items", len(chosen), quiet=quiet) as advance:
                for g, item_id in enumerate(chosen):
                    key = engine.catalog.index[item_id]
                    eligible = np.array([r for r in rows_all.tolist() if key not in touched[vectors.ids[r]]])
                    label = np.array([vectors.ids[r] in takers[item_id] for r in eligible.tolist()])
                    positives, negative_rows = eligible[label], eligible[~label]
                    sampled = (rng.choice(negative_rows, min(negatives, len(negative_rows)), replace=False)
                               if len(negative_rows) else negative_rows)
                    weight = len(negative_rows) / max(1, len(sampled))
                    rows = np.concatenate([positives, sampled])
                    xs.append(targeter.features(key, rows))
                    ys.append(np.r_[np.ones(len(positives)), np.zeros(len(sampled))])
                    ws.append(np.r_[np.ones(len(positives)), np.full(len(sampled), weight)])
                    groups.append(np.full(len(rows), g))
                    advance(1)
        finally:
            engine.close()
    x, y, w, group = np.vstack(xs), np.concatenate(ys), np.concatenate(ws), np.concatenate(groups)
    held = rng.permutation(len(chosen))[: max(1, len(chosen) // 4)]
    test = np.isin(group, held)
    # Which features to fuse is measured, not assumed: each subset is fitted on three
    # quarters of the items and ranks the users of the other quarter (mean per-item AUC,
    # what targeting needs); the best is refitted on every item.
    item_auc: dict[str, float] = {}
    fits: dict[str, Any] = {}
    for name, subset in SUBSETS.items():
        columns = [FEATURES.index(f) for f in subset]
        fits[name] = LogisticRegression(C=1.0, max_iter=2000).fit(x[~test][:, columns], y[~test],
                                                                  sample_weight=w[~test])
        p_held = fits[name].predict_proba(x[test][:, columns])[:, 1]
        item_auc[name] = _mean_item_auc(y[test], p_held, w[test], group[test])
    chosen_subset = max(SUBSETS, key=lambda n: (item_auc[n], n == "all"))
    columns = [FEATURES.index(f) for f in SUBSETS[chosen_subset]]
    p_test = fits[chosen_subset].predict_proba(x[test][:, columns])[:, 1]
    metrics = {"items": len(chosen), "held_out_items": len(held), "positives": int(y.sum()),
               "base_rate": float((y * w).sum() / w.sum()),
               "held_out_log_loss": float(log_loss(y[test], p_test, sample_weight=w[test], labels=[0, 1])),
               "held_out_auc": float(roc_auc_score(y[test], p_test, sample_weight=w[test]))
               if 0 < y[test].sum() < len(y[test]) else None,
               "features_used": chosen_subset, "held_out_item_auc": {k: round(v, 4) for k, v in item_auc.items()}}
    model = LogisticRegression(C=1.0, max_iter=2000).fit(x[:, columns], y, sample_weight=w)  # every item
    coef = np.zeros(len(FEATURES))
    coef[columns] = model.coef_[0]
    return Calibrator(coef=[float(c) for c in coef], intercept=float(model.intercept_[0]), fitted=True,
                      meta={"fitted_at": time.time(), "events": len(events), "cut": cut,
                            "window_s": None if per_user else window_s, "per_user": per_user,
                            "seconds": round(time.perf_counter() - started, 1),
                            "behaviour_model": getattr(registered, "version", None),
                            "behaviour_model_retrained": retrain is not None and registered is not None,
                            "features": list(FEATURES), **metrics})


def _mean_item_auc(y: np.ndarray, p: np.ndarray, w: np.ndarray, group: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    scores = [roc_auc_score(y[group == g], p[group == g], sample_weight=w[group == g])
              for g in np.unique(group) if 0 < y[group == g].sum() < (group == g).sum()]
    return float(np.mean(scores)) if scores else 0.5


def describe(calibrator: Calibrator) -> dict[str, Any]:
    return {"fitted": calibrator.fitted, "coef": dict(zip(FEATURES, calibrator.coef, strict=True)),
            "intercept": calibrator.intercept, **calibrator.meta}
