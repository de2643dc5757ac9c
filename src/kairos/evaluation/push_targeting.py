"""Item -> user targeting (`--protocol push`), in the spirit of RIM (ICLR 2022).

The log is cut at T (default: 80% of events). Candidate items: those that at least
`min_users` users who were known at T, and had not touched the item before T, take in
(T, T + window]. For each item every such eligible user is ranked by each targeter; a
hit is a user who takes the item in the window. Where timestamps are synthetic
(UniSRec files: order only), or with `order="per-user"` (MovieLens users rate in
bursts and leave: few known at T come back within a week), the cut is each user's own
80% position and the window the rest of their sequence.

`cold`: the candidate items' events before T are removed too, so each is a brand-new
item known only by its text (the `item_created` trigger's situation); eligibility is
unchanged. A seeded sample of COLD_ITEMS candidates (unless `max_items` says otherwise),
so that removing their events leaves most of the training data in place.

`kairos` is what the push pipeline serves: its Targeter's features and a calibration
fitted on the events before T alone (an inner cut of the same geometry, as `kairos push
calibrate` fits it, with a behaviour model trained before the inner cut so that its
feature is not better in the fit than it is here; in the cold variant, the fit's own
items are made cold too, as the cold map `kairos push calibrate` serves for new items).
"""

from __future__ import annotations

import math
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kairos.config import DAY
from kairos.engine import Engine
from kairos.evaluation.data import EvalData
from kairos.evaluation.protocols import train_sequential_for, training_report
from kairos.evaluation.replay import _engine_at_cut, _is_choice, cut_time
from kairos.progress import progress
from kairos.store import EventRecord

TARGETERS = ("random", "active", "category", "covisit", "semantic", "sequential", "kairos")
METRICS = ("precision@10", "precision@100", "recall@100", "NDCG@100")
BOOTSTRAP = 1000
CALIBRATION_BINS = 10

# Called with the engine at the cut and the split (tests prove the leakage guards with it).
Audit = Callable[[Engine, "Split"], None]


@dataclass
class Split:
    train: list[EventRecord]
    hits: dict[str, set[str]]  # candidate item -> eligible users who take it in the window
    eligible_excluded: dict[str, set[str]]  # candidate item -> users who touched it before the cut
    cut: float
    order: str  # "time" | "per-user"


@dataclass
class TargetingResult:
    dataset: str
    cut: float
    order: str
    window_days: float
    cold: bool
    items: int
    users: int
    targeters: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # name -> metric -> mean/low/high
    paired: dict[str, dict[str, float]] = field(default_factory=dict)  # "kairos/category" -> ratio, low, high
    calibration: dict[str, Any] = field(default_factory=dict)
    sequential: dict[str, Any] = field(default_factory=dict)
    calibrator: dict[str, Any] = field(default_factory=dict)
    ceiling: dict[str, float] = field(default_factory=dict)  # the best any ranking could score
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"protocol": "push", "dataset": self.dataset, "cut": self.cut, "order": self.order,
                "window_days": self.window_days, "cold": self.cold, "items": self.items, "users": self.users,
                "targeters": self.targeters, "paired": self.paired, "calibration": self.calibration,
                "ceiling": self.ceiling, "sequential_model": self.sequential, "calibrator": self.calibrator,
                "notes": self.notes}


COLD_ITEMS = 200  # cold candidates by default: removing more would take much of the training data away


def split_for_targeting(data: EvalData, cut_fraction: float, window_days: float, min_users: int,
                        cold: bool, per_user: bool, max_items: int | None = None, seed: int = 0) -> Split:
    """The training events, and per candidate item its hits and the users it excludes.
    `max_items` samples the candidates (seeded) before a cold split removes their events."""
    if per_user:
        by_user: dict[str, list[EventRecord]] = defaultdict(list)
        for e in data.events:
            by_user[e.user_id].append(e)
        train, future = [], []
        for events in by_user.values():
            at = max(1, int(len(events) * cut_fraction))
            train += events[:at]
            future += events[at:]
        train.sort(key=lambda e: e.timestamp)
        cut, order = max(e.timestamp for e in train), "per-user"
    else:
        cut, order = cut_time(data.events, cut_fraction), "time"
        end = cut + window_days * DAY
        train = [e for e in data.events if e.timestamp < cut]
        future = [e for e in data.events if cut <= e.timestamp <= end]
    known = {e.user_id for e in train}
    touched: dict[str, set[str]] = defaultdict(set)
    for e in train:
        touched[e.item_id].add(e.user_id)
    takers: dict[str, set[str]] = defaultdict(set)
    for e in future:
        if _is_choice(e) and e.user_id in known and e.user_id not in touched[e.item_id]:
            takers[e.item_id].add(e.user_id)
    hits = {item: users for item, users in takers.items() if len(users) >= min_users}
    if cold and max_items is None:
        max_items = COLD_ITEMS
    if max_items is not None and len(hits) > max_items:
        chosen = np.random.default_rng(seed).choice(sorted(hits), max_items, replace=False).tolist()
        hits = {item: hits[item] for item in sorted(chosen)}
    if cold:
        train = [e for e in train if e.item_id not in hits]
        known = {e.user_id for e in train}
        hits = {item: users & known for item, users in hits.items()}
        hits = {item: users for item, users in hits.items() if len(users) >= min_users}
    return Split(train, hits, {item: touched[item] for item in hits}, cut, order)


def push_targeting(data: EvalData, targeters: list[str], cut_fraction: float = 0.8, window_days: float = 7.0,
                   min_users: int = 3, cold: bool = False, max_items: int | None = None, order: str = "auto",
                   seed: int = 0, quiet: bool = False, audit: Audit | None = None,
                   sequential: dict[str, Any] | None = None) -> TargetingResult:
    from kairos.push.calibration import DEFAULT, fit_calibration
    from kairos.push.engine_view import EngineView
    from kairos.push.targeting import Targeter
    from kairos.push.user_vectors import UserVectors

    unknown = set(targeters) - set(TARGETERS)
    if unknown:
        raise ValueError(f"unknown push targeters {sorted(unknown)}; known: {', '.join(TARGETERS)}")
    if order not in ("auto", "time", "per-user"):
        raise ValueError(f"order: {order!r} is not auto, time or per-user")
    per_user = order == "per-user" or (order == "auto" and data.synthetic_time)
    split = split_for_targeting(data, cut_fraction, window_days, min_users, cold, per_user, max_items, seed)
    rng = np.random.default_rng(seed)
    items = sorted(split.hits)
    result = TargetingResult(data.name, split.cut, split.order, window_days, cold, len(items), 0)
    if per_user:
        why = "synthetic timestamps (order only)" if data.synthetic_time else "per-user order asked for"
        result.notes.append(f"{why}: each user's own {cut_fraction:.0%} position is the cut and the rest of their "
                            "sequence the window; other users' later events are visible at a user's cut")
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in targeters}
    ceiling: list[dict[str, float]] = []
    served_p: list[np.ndarray] = []
    served_hit: list[np.ndarray] = []
    served_top: list[np.ndarray] = []
    with tempfile.TemporaryDirectory(prefix="kairos-push-eval-") as scratch:
        engine, _ = _engine_at_cut(data, split.cut, scratch, decay=False, train=split.train)
        try:
            if audit is not None:
                audit(engine, split)
            registered = None
            if {"sequential", "kairos"} & set(targeters):
                key = ("push", data.name, data.fingerprint(), str(cut_fraction), str(window_days), str(cold),
                       str(min_users), split.order)
                registered = train_sequential_for(engine, key, sequential, quiet)
                result.sequential = training_report(registered)
            calibrator = DEFAULT
            if "kairos" in targeters:
                try:
                    # The same geometry as this evaluation, inside the events before its cut.
                    calibrator = fit_calibration(engine.store, engine.settings, registered, quiet=quiet,
                                                 window_s=window_days * DAY, per_user=per_user,
                                                 min_takers=min_users, retrain=sequential or {}, cold=cold)
                except ValueError as error:
                    result.notes.append(f"kairos: the hand-set prior calibration ({error})")
                result.calibrator = {"fitted": calibrator.fitted, **{k: v for k, v in calibrator.meta.items()
                                                                      if k != "features"}}
            view = EngineView(engine)
            vectors = UserVectors(view)
            vectors.mark_all()
            vectors.refresh()
            targeter = Targeter(view, vectors, calibrator)
            alive = np.flatnonzero(vectors.alive[: len(vectors)])
            result.users = len(alive)
            affinity = _category_affinity(engine, vectors, alive)
            with progress(f"push targeting{' (cold)' if cold else ''}", len(items), quiet=quiet) as advance:
                for item_id in items:
                    item_key = engine.catalog.index[item_id]
                    excluded = split.eligible_excluded[item_id]
                    eligible = np.array([r for r in alive.tolist() if vectors.ids[r] not in excluded])
                    hit = np.array([vectors.ids[r] in split.hits[item_id] for r in eligible.tolist()])
                    x = targeter.features(item_key, eligible)
                    ceiling.append(_metrics(np.sort(hit)[::-1], int(hit.sum())))
                    for name in targeters:
                        scores = _scores(name, x, eligible, affinity, engine.catalog.categories[item_key],
                                         targeter.calibrator_for(item_key), rng)
                        ranking = np.lexsort((rng.random(len(scores)), -scores))  # ties broken at random
                        rows[name].append(_metrics(hit[ranking], int(hit.sum())))
                        if name == "kairos":  # its scores are the served p
                            served_p.append(scores)
                            served_hit.append(hit)
                            top = np.zeros(len(scores), dtype=bool)
                            top[ranking[:100]] = True
                            served_top.append(top)
                    advance(1)
        finally:
            engine.close()
    result.targeters, result.paired = _summaries(rows, rng)
    result.ceiling = {m: float(np.mean([r[m] for r in ceiling])) if ceiling else 0.0 for m in METRICS}
    if served_p:
        result.calibration = calibration_report(np.concatenate(served_p), np.concatenate(served_hit),
                                                np.concatenate(served_top))
    return result


def _category_affinity(engine: Engine, vectors: Any, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Per category, each user's number of recent visits in it (rows of the user vectors)."""
    out: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(vectors.alive), dtype=np.float64))
    categories = engine.catalog.categories
    with engine.lock:
        for row in rows.tolist():
            user = engine.state.users.get(vectors.ids[row])
            if user is None:
                continue
            for step in user.recent:
                for category in categories[step.item]:
                    out[category][row] += 1.0
    return dict(out)


def _scores(name: str, x: np.ndarray, rows: np.ndarray, affinity: dict[str, np.ndarray], categories: list[str],
            calibrator: Any, rng: np.random.Generator) -> np.ndarray:
    """Higher first. Activity breaks the ties of the source-only targeters."""
    activity = x[:, 5] / (1.0 + float(x[:, 5].max(initial=0.0)))  # in [0, 1)
    if name == "random":
        return rng.random(len(rows))
    if name == "active":
        return x[:, 5].astype(np.float64)
    if name == "category":
        counts = sum((affinity[c][rows] for c in categories if c in affinity), np.zeros(len(rows)))
        return counts + activity
    if name == "covisit":
        return x[:, 4] + 1e-3 * activity
    if name == "semantic":
        return np.where(x[:, 3] > 0, x[:, 2], -2.0) + 1e-3 * activity
    if name == "sequential":
        return x[:, 0] + 1e-3 * activity
    return calibrator.ranked(x)  # kairos: the served p, as an audience is ranked by it


def _metrics(hits_in_order: np.ndarray, relevant: int) -> dict[str, float]:
    top = hits_in_order[:100].astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(2, len(top) + 2))
    ideal = float(discounts[: min(relevant, len(top))].sum())
    return {"precision@10": float(top[:10].sum()) / 10, "precision@100": float(top.sum()) / 100,
            "recall@100": float(top.sum()) / relevant if relevant else 0.0,
            "NDCG@100": float((top * discounts).sum()) / ideal if ideal else 0.0}


def _summaries(rows: dict[str, list[dict[str, float]]], rng: np.random.Generator
               ) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, dict[str, float]]]:
    """Means over items with 95% bootstrap intervals (items resampled), and for `kairos`
    the ratio of its precision@100 to each other targeter's on the same resamples (paired)."""
    names = list(rows)
    n = len(rows[names[0]]) if names else 0
    out: dict[str, dict[str, dict[str, float]]] = {}
    if n == 0:
        return out, {}
    draws = rng.integers(0, n, size=(BOOTSTRAP, n))
    means: dict[str, dict[str, np.ndarray]] = {}
    for name in names:
        out[name], means[name] = {}, {}
        for metric in METRICS:
            values = np.array([r[metric] for r in rows[name]])
            boot = values[draws].mean(1)
            means[name][metric] = boot
            low, high = np.percentile(boot, [2.5, 97.5])
            out[name][metric] = {"mean": float(values.mean()), "low": float(low), "high": float(high)}
    paired = {}
    if "kairos" in names:
        for other in names:
            if other == "kairos":
                continue
            ours, theirs = means["kairos"]["precision@100"], means[other]["precision@100"]
            ratio = np.where(theirs > 0, ours / np.maximum(theirs, 1e-12), math.inf)
            low, high = np.percentile(ratio, [2.5, 97.5])
            base = out[other]["precision@100"]["mean"]
            paired[f"kairos/{other}"] = {"ratio": out["kairos"]["precision@100"]["mean"] / base if base else math.inf,
                                        "low": float(low), "high": float(high)}
    return out, paired


def calibration_report(p: np.ndarray, hit: np.ndarray, top: np.ndarray) -> dict[str, Any]:
    """Expected calibration error (equal-mass bins) and Brier score of the served p, over
    every eligible (user, item) pair and over each item's top 100 (those it would notify)."""
    def one(p_: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        order = np.argsort(p_)
        bins = [b for b in np.array_split(order, CALIBRATION_BINS) if len(b)]
        table = [{"p": float(p_[b].mean()), "rate": float(y[b].mean()), "n": len(b)} for b in bins]
        ece = sum(abs(t["p"] - t["rate"]) * t["n"] for t in table) / max(1, len(p_))
        return {"pairs": len(p_), "positives": int(y.sum()), "mean_p": float(p_.mean()) if len(p_) else 0.0,
                "rate": float(y.mean()) if len(y) else 0.0, "ece": float(ece),
                "brier": float(((p_ - y) ** 2).mean()) if len(p_) else 0.0, "bins": table}

    y = hit.astype(np.float64)
    return {"all": one(p, y), "top100": one(p[top], y[top])}
