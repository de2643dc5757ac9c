"""Scores -> p: the probability that a user engages with an item within a week.

Targeting scores each (user, item) with features from every model: the behaviour
model's log-probability of the item as the user's next one, the cosine of the user's
semantic profile to the item's text, co-visitation from the user's latest visits, and
the user's activity and the item's popularity (FEATURES). A model maps them to p:
a logistic regression over one of SUBSETS of the features, or gradient-boosted trees
(LightGBM) over all of them; which one serves is chosen by measurement — the mean
precision@100 over the whole audience of held-out items, the figure targeting is
judged by. It is fitted on the event log (`fit_calibration`, `kairos push calibrate`):
the log is cut at its 80% quantile of event times, the online state is rebuilt from
the events before the cut, and for items chosen after the cut the label of each user
who had not touched the item is whether they engaged with it (a positive event) within
the week after the cut. Negatives are sampled per item and weighted back, so the
intercept stays a real base rate. Until a fit exists, DEFAULT (a hand-set prior, see
docs/push.md) gives p of the right order.

Brand-new items (nobody has touched them: `item_created`) have no co-visitation and
no popularity, so the fusion that serves known items misjudges them; a second fit,
`cold=True`, removes the chosen items' events before the cut and is served for items
without any (Calibrator.cold).

A p is organic engagement, not the effect of notifying: nobody was notified in the
log. Feedback (opens, clicks) enters the log as events, so refits learn from it.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from kairos.config import DAY, Settings
from kairos.progress import progress
from kairos.store.base import EventRecord

FEATURES = ("seq_logp", "has_seq", "semantic", "has_semantic", "covisit", "log_events", "log_idle_days",
            "log_popularity")
ACTIVITY = ("log_events", "log_idle_days", "log_popularity")
# Feature subsets a logistic fit chooses between (by held-out items); a feature left out gets 0.
SUBSETS: dict[str, tuple[str, ...]] = {
    "all": FEATURES,
    "semantic": ("semantic", "has_semantic", *ACTIVITY),
    "sequential": ("seq_logp", "has_seq", *ACTIVITY),
    "covisit": ("covisit", *ACTIVITY),
    "taste": ("seq_logp", "has_seq", "semantic", "has_semantic", "covisit"),
}
SEQ_FLOOR = -25.0  # log-probability standing in for "the behaviour model has no opinion"
COVISIT_FLOOR = 1e-4
# Small trees: a fit has a few thousand positives at most; more would learn the sample.
# Trees cost ~2.5 ms per 1,000 users (150 trees, 2 cores), five times the features; so over
# a big audience a linear screen picks the likeliest SCREENED users and only those get them.
SCREENED = 5000
LIGHTGBM = {"objective": "binary", "n_estimators": 150, "learning_rate": 0.05, "num_leaves": 15,
            "min_child_samples": 40, "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.9,
            "reg_lambda": 1.0, "n_jobs": 2, "verbose": -1}


@dataclass
class Calibrator:
    coef: list[float]
    intercept: float
    fitted: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    kind: str = "logistic"  # "logistic" (coef, intercept) | "lightgbm" (booster)
    booster: str | None = None  # a LightGBM model as text
    cold: Calibrator | None = None  # served for items nobody has touched yet
    screen: Calibrator | None = None  # with trees: the linear map that shortlists a big audience

    def __post_init__(self) -> None:
        self._model: Any = None  # the loaded booster, not a field: not stored

    def p(self, features: np.ndarray) -> np.ndarray:
        if self.kind == "lightgbm":
            return self._loaded().predict(np.asarray(features, dtype=np.float64), num_threads=2)
        z = features.astype(np.float64) @ np.asarray(self.coef, dtype=np.float64) + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))

    def ranked(self, features: np.ndarray, keep: int = SCREENED) -> np.ndarray:
        """p of every row, to rank an audience by: with trees and more than `keep` rows,
        the screen's `keep` likeliest rows get the trees' p and the others the screen's,
        capped below the lowest of those (the same ranking a fit is chosen by)."""
        if self.kind != "lightgbm" or self.screen is None or len(features) <= keep:
            return self.p(features)
        rough = self.screen.p(features)
        top = np.argpartition(-rough, keep - 1)[:keep]
        fine = self.p(features[top])
        out = np.minimum(rough, float(fine.min()) * (1 - 1e-9))
        out[top] = fine
        return out

    def for_item(self, cold: bool) -> Calibrator:
        """The map to serve an item with: the cold one for an item nobody has touched."""
        return self.cold if cold and self.cold is not None else self

    def _loaded(self) -> Any:
        if self._model is None:
            import lightgbm

            self._model = lightgbm.Booster(model_str=self.booster)
        return self._model

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for part in ("cold", "screen"):
            value = getattr(self, part)
            out[part] = value.as_dict() if value is not None else None
        return out

    def to_json(self) -> str:
        return json.dumps(self.as_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        if len(data["coef"]) != len(FEATURES) or data.get("kind", "logistic") not in ("logistic", "lightgbm"):
            raise ValueError("calibration has other features than this version; refit it")
        parts = {part: cls.from_dict(data[part]) if data.get(part) else None for part in ("cold", "screen")}
        return cls(**{**data, **parts})

    @classmethod
    def from_json(cls, text: str) -> Calibrator:
        return cls.from_dict(json.loads(text))


# Until a service has fitted its own: a hand-set prior, not a fit. Taste first (text, then
# behaviour, then co-visitation), activity second, so a new shop's audiences follow what
# users did; the intercept puts p near the 0.2% per user, item and week that fits on
# ml-latest-small give (docs/push.md).
DEFAULT = Calibrator(coef=[0.12, 0.0, 2.5, 0.0, 0.25, 0.35, -0.4, 0.15], intercept=-6.0, fitted=False,
                     meta={"source": "hand-set prior (no fit on this log yet: kairos push calibrate)"})


def cut_log(events: list[EventRecord], holdout: float, window_s: float, per_user: bool
            ) -> tuple[list[EventRecord], list[EventRecord], float]:
    """(events before the cut, labelling events after it, the cut time): a cut at the
    (1 - holdout) quantile of event times and a window after it, or with `per_user` at
    each user's own (1 - holdout) position and the rest of their sequence."""
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
        return before, after, max(e.timestamp for e in before)
    times = np.array([e.timestamp for e in events])
    cut = float(np.quantile(times, 1 - holdout))
    return ([e for e in events if e.timestamp < cut],
            [e for e in events if cut <= e.timestamp <= cut + window_s], cut)


def fit_calibration(store: Any, settings: Settings, registered: Any = None, *, holdout: float = 0.2,
                    window_s: float = 7 * DAY, max_items: int = 300, negatives: int = 50, seed: int = 0,
                    quiet: bool = False, per_user: bool = False, min_takers: int = 1,
                    retrain: dict[str, Any] | None = None, cold: bool = False,
                    kinds: tuple[str, ...] = ("logistic", "lightgbm")) -> Calibrator:
    """Fit on the log of `store` as the module docstring says. `registered`: the behaviour
    model to score with (the one serving; it saw the whole log, so its feature is a little
    optimistic). `per_user`: cut each user's sequence at their own (1 - holdout) position
    and label by the rest of it (logs whose timestamps carry order only); `min_takers`:
    only items that many users took after the cut (to match an evaluation's selection);
    `retrain` (SeqRecConfig overrides, {} for the preset): instead of `registered`, train a
    behaviour model on the events before the inner cut, so its feature is as good in the
    fit as in serving (evaluation does; it costs a training). `cold`: the chosen items'
    events before the cut are removed, so the fit is of brand-new items (without a
    retrain, the behaviour model, which knows those items, is not used). `kinds`: the
    model kinds to choose between.
    ValueError when the log is too small to say anything."""
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
    before, after, cut = cut_log(events, holdout, window_s, per_user)
    rng = np.random.default_rng(seed)
    touched: dict[str, set[str]] = defaultdict(set)  # user -> items before the cut
    for e in before:
        touched[e.user_id].add(e.item_id)
    takers: dict[str, set[str]] = defaultdict(set)
    for e in after:
        if settings.event_weight(e.type, e.value) > 0 and e.user_id in touched \
                and e.item_id not in touched[e.user_id]:
            takers[e.item_id].add(e.user_id)
    chosen = sorted(item for item, users in takers.items() if len(users) >= min_takers)
    if len(chosen) > max_items:
        chosen = sorted(rng.choice(chosen, max_items, replace=False).tolist())
    if cold:
        removed = set(chosen)
        before = [e for e in before if e.item_id not in removed]
        known = {e.user_id for e in before}
        takers = {item: takers[item] & known for item in chosen}
        chosen = [item for item in chosen if len(takers[item]) >= min_takers]
    if len(chosen) < 5:
        raise ValueError(f"only {len(chosen)} items were taken up after the cut; too few to calibrate")
    fold = dict(zip(rng.permutation(chosen).tolist(), [i % 2 for i in range(len(chosen))], strict=True))
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
            elif cold:
                registered = None  # it learned the chosen items from the events removed here
            if registered is not None:
                engine.install_model(registered)
            view = EngineView(engine)
            vectors = UserVectors(view)
            vectors.mark_all()
            vectors.refresh()
            targeter = Targeter(view, vectors, DEFAULT)
            rows_all = np.flatnonzero(vectors.alive[: len(vectors)])

            def audience(item_id: str) -> tuple[int, np.ndarray, np.ndarray]:
                key = engine.catalog.index[item_id]
                eligible = np.array([r for r in rows_all.tolist() if item_id not in touched[vectors.ids[r]]])
                label = np.array([vectors.ids[r] in takers[item_id] for r in eligible.tolist()])
                return key, eligible, label

            xs, ys, ws, groups = [], [], [], []
            with progress("calibration: scoring items", len(chosen), quiet=quiet) as advance:
                for item_id in chosen:
                    key, eligible, label = audience(item_id)
                    positives, negative_rows = eligible[label], eligible[~label]
                    sampled = (rng.choice(negative_rows, min(negatives, len(negative_rows)), replace=False)
                               if len(negative_rows) else negative_rows)
                    weight = len(negative_rows) / max(1, len(sampled))
                    rows = np.concatenate([positives, sampled])
                    xs.append(targeter.features(key, rows))
                    ys.append(np.r_[np.ones(len(positives)), np.zeros(len(sampled))])
                    ws.append(np.r_[np.ones(len(positives)), np.full(len(sampled), weight)])
                    groups.append(np.full(len(rows), fold[item_id]))
                    advance(1)
            x, y, w, group = np.vstack(xs), np.concatenate(ys), np.concatenate(ws), np.concatenate(groups)
            # Which model serves is measured, not assumed: each candidate is fitted on one half
            # of the items and ranks the whole audience of each item in the other half (and the
            # other way round); the best mean precision@100 is refitted on every item.
            halves = {name: [_fit(name, x[group == g], y[group == g], w[group == g]) for g in (0, 1)]
                      for name in _candidates(kinds)}
            scores: dict[str, list[tuple[float, float]]] = {name: [] for name in halves}
            with progress("calibration: choosing the model", len(chosen), quiet=quiet) as advance:
                for item_id in chosen:
                    key, eligible, label = audience(item_id)
                    features = targeter.features(key, eligible)
                    for name, fitted in halves.items():
                        scores[name].append(_ranking_quality(fitted[1 - fold[item_id]].ranked(features), label))
                    advance(1)
        finally:
            engine.close()
    quality = {name: (float(np.mean([q[0] for q in v])), float(np.mean([q[1] for q in v])))
               for name, v in scores.items()}
    best = max(quality, key=lambda n: (quality[n], n == "logistic:all"))
    p_out = np.zeros(len(y))  # each sample's p from the half that did not see its item
    for g in (0, 1):
        p_out[group == g] = halves[best][1 - g].p(x[group == g])
    model = _fit(best, x, y, w)  # every item
    from sklearn.metrics import log_loss, roc_auc_score

    model.meta = {"fitted_at": time.time(), "events": len(events), "cut": cut,
                  "window_s": None if per_user else window_s, "per_user": per_user, "cold": cold,
                  "seconds": round(time.perf_counter() - started, 1),
                  "behaviour_model": getattr(registered, "version", None),
                  "behaviour_model_retrained": retrain is not None and registered is not None,
                  "features": list(FEATURES), "items": len(chosen), "positives": int(y.sum()),
                  "base_rate": float((y * w).sum() / w.sum()),
                  "held_out_log_loss": float(log_loss(y, p_out, sample_weight=w, labels=[0, 1])),
                  "held_out_auc": float(roc_auc_score(y, p_out, sample_weight=w)) if 0 < y.sum() < len(y) else None,
                  "model": best,
                  "held_out_precision@100": {n: round(q[0], 5) for n, q in quality.items()},
                  "held_out_item_auc": {n: round(q[1], 4) for n, q in quality.items()}}
    return model


def _candidates(kinds: tuple[str, ...]) -> list[str]:
    out = [f"logistic:{name}" for name in SUBSETS] if "logistic" in kinds else []
    return out + (["lightgbm:all"] if "lightgbm" in kinds else [])


def _fit(name: str, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> Calibrator:
    kind, subset = name.split(":")
    if kind == "lightgbm":
        import lightgbm

        booster = lightgbm.LGBMClassifier(**LIGHTGBM).fit(x.astype(np.float64), y, sample_weight=w).booster_
        return Calibrator(coef=[0.0] * len(FEATURES), intercept=0.0, fitted=True, kind="lightgbm",
                          booster=booster.model_to_string(), screen=_fit("logistic:all", x, y, w))
    from sklearn.linear_model import LogisticRegression

    columns = [FEATURES.index(f) for f in SUBSETS[subset]]
    fitted = LogisticRegression(C=1.0, max_iter=2000).fit(x[:, columns], y, sample_weight=w)
    coef = np.zeros(len(FEATURES))
    coef[columns] = fitted.coef_[0]
    return Calibrator(coef=[float(c) for c in coef], intercept=float(fitted.intercept_[0]), fitted=True)


def _ranking_quality(p: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    """(precision@100, AUC) of ranking one item's audience by p (ties: lower row first)."""
    from sklearn.metrics import roc_auc_score

    order = np.argsort(-p, kind="stable")
    precision = float(label[order[:100]].sum()) / 100
    auc = float(roc_auc_score(label, p)) if 0 < label.sum() < len(label) else 0.5
    return precision, auc


def describe(calibrator: Calibrator) -> dict[str, Any]:
    out: dict[str, Any] = {"fitted": calibrator.fitted, "kind": calibrator.kind}
    if calibrator.kind == "logistic":
        out |= {"coef": dict(zip(FEATURES, calibrator.coef, strict=True)), "intercept": calibrator.intercept}
    out |= {k: v for k, v in calibrator.meta.items() if k != "features"}
    if calibrator.cold is not None:
        out["cold"] = describe(calibrator.cold)
    return out
