"""Time-split protocols: global temporal split and prequential replay.

Both train (ingest) on the events before a time cut and then look forward.
The replay is the real-time test: each event after the cut is first predicted,
as of its own moment in simulated time, then (online) ingested or (frozen) not.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kairos.clock import SimulatedClock
from kairos.config import Settings
from kairos.engine import Engine
from kairos.evaluation.data import SCRATCH, EvalData
from kairos.evaluation.metrics import coverage, list_metrics, mean_metrics, novelty
from kairos.evaluation.protocols import (
    _items_as_models,
    _percentiles,
    model_weights,
    train_sequential_for,
    training_report,
    uses_sequential,
)
from kairos.progress import progress
from kairos.schema import NON_VISIT_TYPES
from kairos.store import EventRecord

# Called just before a prediction is made for `event` (tests use it to prove that
# nothing at or after the event's time is visible yet).
Audit = Callable[[Engine, EventRecord], None]


def stream_settings(db_path: Path, decay: bool) -> Settings:
    """Serving defaults, with every event type an interaction of positive weight (a
    rating of 1 star is still what the user chose to watch)."""
    settings = Settings(**SCRATCH, db_path=db_path, sqlite_synchronous="NORMAL",
                        rating_negative_weight=1.0, rating_neutral_weight=1.0,
                        rating_positive_weight=1.0)
    if not decay:
        settings = settings.model_copy(update={"popularity_half_life_s": 0.0, "covisit_half_life_s": 0.0})
    return settings


def cut_time(events: list[EventRecord], fraction: float) -> float:
    """The timestamp before which `fraction` of the events fall."""
    if not 0 < fraction < 1:
        raise ValueError("the cut fraction must be within (0, 1)")
    return events[min(int(len(events) * fraction), len(events) - 1)].timestamp


def _engine_at_cut(data: EvalData, cut: float, scratch: str, decay: bool,
                   train: list[EventRecord] | None = None) -> tuple[Engine, SimulatedClock]:
    """An engine at simulated time `cut` holding `train` (default: every event before it)."""
    clock = SimulatedClock(cut)
    engine = Engine(stream_settings(Path(scratch) / "stream.db", decay), clock=clock)
    if train is None:
        train = [e for e in data.events if e.timestamp < cut]
    engine.upsert_items(_items_as_models(data, train))
    for start in range(0, len(train), 10_000):
        engine.ingest_records(train[start : start + 10_000])
    return engine, clock


def _is_choice(event: EventRecord) -> bool:
    return event.type not in NON_VISIT_TYPES


# -- global temporal split ---------------------------------------------------------------


@dataclass
class TemporalResult:
    dataset: str
    cut: float
    users: int
    k: int
    models: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"protocol": "temporal", "dataset": self.dataset, "cut": self.cut, "users": self.users,
                "k": self.k, "models": self.models}


def temporal_split(data: EvalData, models: list[str], cut_fraction: float = 0.8, k: int = 10,
                   horizon: int = 10, seed: int = 0, decay: bool = False, quiet: bool = False,
                   sequential: dict[str, Any] | None = None) -> TemporalResult:
    """Recommend once for each user as of the cut; the truth is the user's next
    `horizon` distinct items after it. Recall@k, NDCG@k, coverage@k."""
    cut = cut_time(data.events, cut_fraction)
    truth: dict[str, list[str]] = defaultdict(list)
    for event in data.events:
        if event.timestamp >= cut and _is_choice(event):
            items = truth[event.user_id]
            if len(items) < horizon and event.item_id not in items:
                items.append(event.item_id)
    with tempfile.TemporaryDirectory(prefix="kairos-temporal-") as scratch:
        engine, _ = _engine_at_cut(data, cut, scratch, decay)
        if uses_sequential(models, engine.settings):
            key = ("temporal", data.name, data.fingerprint(), str(cut), str(decay))
            train_sequential_for(engine, key, sequential, quiet)
        users = sorted(truth)
        result = TemporalResult(data.name, cut, len(users), k)
        for name in models:
            weights = model_weights(name, engine.settings)
            rng = np.random.default_rng(seed)
            rows, lists = [], []
            with progress(f"temporal {name}", len(users), quiet=quiet) as advance:
                for user in users:
                    ctx = engine.user_context(user, exclude_seen=True)
                    if weights is None:
                        scores = np.where(ctx.allowed, rng.random(len(engine.catalog)) + 1e-9, 0.0)
                        top = np.argsort(-scores)[:k].tolist()
                    else:
                        top = [item for item, _, _ in engine.fuse(ctx, weights, depth=max(3 * k, 50)).top(k)]
                    relevant = {engine.catalog.index[i] for i in truth[user]}
                    hits = [1.0 if item in relevant else 0.0 for item in top]
                    ideal = sum(1.0 / math.log2(r + 2) for r in range(min(k, len(relevant))))
                    rows.append({f"Recall@{k}": sum(hits) / len(relevant),
                                 f"NDCG@{k}": sum(h / math.log2(r + 2) for r, h in enumerate(hits)) / ideal})
                    lists.append(top)
                    advance(1)
            result.models[name] = {**mean_metrics(rows), f"coverage@{k}": coverage(lists, len(engine.catalog))}
        engine.close()
    return result


# -- prequential replay ------------------------------------------------------------------


@dataclass
class ReplayRun:
    metrics: dict[str, float]
    hits: list[float]  # HR@10 of each scored event, in stream order
    latency_ms: dict[str, float]
    coverage: float
    novelty: float


@dataclass
class ReplayResult:
    dataset: str
    cut: float
    events: int
    models: dict[str, dict[str, ReplayRun]] = field(default_factory=dict)  # model -> online|frozen|refresh <s>s
    sequential: dict[str, Any] = field(default_factory=dict)  # the behaviour model measured, if any

    def ratio(self, model: str, metric: str = "HR@10", over: str = "frozen") -> float:
        base = self.models[model][over].metrics[metric]
        return self.models[model]["online"].metrics[metric] / base if base else math.inf

    def refresh_modes(self) -> list[str]:
        modes = {mode for runs in self.models.values() for mode in runs if mode.startswith("refresh")}
        return sorted(modes, key=lambda mode: float(mode.split()[1][:-1]))

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": "replay", "dataset": self.dataset, "cut": self.cut, "events": self.events,
            "sequential_model": self.sequential, "models": {
                name: {**{mode: {"metrics": run.metrics, "latency_ms": run.latency_ms,
                                 "coverage@10": run.coverage, "novelty@10": run.novelty}
                          for mode, run in runs.items()},
                       "online_over_frozen_HR@10": self.ratio(name),
                       **{f"online_over_{mode.replace(' ', '_')}_HR@10": self.ratio(name, over=mode)
                          for mode in runs if mode.startswith("refresh")}}
                for name, runs in self.models.items()
            },
        }


def replay(data: EvalData, models: list[str], cut_fraction: float = 0.8, max_events: int | None = None,
           max_users: int | None = None, seed: int = 0, decay: bool = True, quiet: bool = False,
           audit: Audit | None = None, sequential: dict[str, Any] | None = None,
           refresh: list[float] | None = None) -> ReplayResult:
    """Where a model reads the sequential source, the behaviour model is trained once
    on the events before the cut (`sequential`: SeqRecConfig fields over the preset);
    online, it then reads each user's live sequence; frozen, the sequence at the cut.

    `refresh` (seconds): peers that take new data in batches (Gorse refits hourly, cloud
    recommenders take hours): the same engine receives the stream only at each boundary
    of that interval, so between boundaries it serves the state of the last one."""
    cut = cut_time(data.events, cut_fraction)
    stream = [e for e in data.events if e.timestamp >= cut]
    if max_users is not None:
        users = sorted({e.user_id for e in stream})
        if max_users < len(users):
            chosen = set(np.random.default_rng(seed).choice(users, max_users, replace=False).tolist())
            stream = [e for e in stream if e.user_id in chosen]
    if max_events is not None:
        stream = stream[:max_events]
    result = ReplayResult(data.name, cut, sum(1 for e in stream if _is_choice(e)))
    for name in models:
        result.models[name] = {}
        for mode in ("online", "frozen", *(f"refresh {r:g}s" for r in refresh or [])):
            with tempfile.TemporaryDirectory(prefix="kairos-replay-") as scratch:
                engine, clock = _engine_at_cut(data, cut, scratch, decay)
                if uses_sequential([name], engine.settings):
                    key = ("replay", data.name, data.fingerprint(), str(cut), str(decay))
                    result.sequential = training_report(train_sequential_for(engine, key, sequential, quiet))
                counts = np.bincount([engine.catalog.index[e.item_id] for e in data.events if e.timestamp < cut],
                                     minlength=len(engine.catalog)).astype(float)
                every = float(mode.split()[1][:-1]) if mode.startswith("refresh") else None
                result.models[name][mode] = _replay_run(engine, clock, name, stream, mode != "frozen",
                                                        seed, counts, quiet, audit, every)
                engine.close()
    return result


def _replay_run(engine: Engine, clock: SimulatedClock, name: str, stream: list[EventRecord], online: bool,
                seed: int, counts: np.ndarray, quiet: bool, audit: Audit | None,
                refresh_s: float | None = None) -> ReplayRun:
    weights = model_weights(name, engine.settings)
    rng = np.random.default_rng(seed)
    rows, hits, lists, latencies = [], [], [], []
    pending: list[EventRecord] = []  # refresh: the events since the last boundary
    mode = "frozen" if not online else f"refresh {refresh_s:g}s" if refresh_s else "online"
    with progress(f"replay {name} ({mode})", len(stream), quiet=quiet) as advance:
        for event in stream:
            if pending and refresh_s and event.timestamp // refresh_s > pending[0].timestamp // refresh_s:
                engine.ingest_records(pending)
                pending = []
            clock.set(max(clock.now(), event.timestamp))
            if _is_choice(event):
                if audit is not None:
                    audit(engine, event)
                started = time.perf_counter()
                if weights is None:
                    ctx = engine.user_context(event.user_id)
                    allowed = np.flatnonzero(ctx.allowed)
                    top = rng.choice(allowed, min(10, len(allowed)), replace=False).tolist()
                else:
                    top = [engine.catalog.index[i.item_id] for i in _recommend(engine, event.user_id, weights)]
                latencies.append(time.perf_counter() - started)
                target = engine.catalog.index[event.item_id]
                row = list_metrics(top, target, 10)
                rows.append(row)
                hits.append(row["HR@10"])
                lists.append(top)
            if online and refresh_s:
                pending.append(event)
            elif online:
                engine.ingest_records([event])
            advance(1)
    return ReplayRun(mean_metrics(rows), hits, _percentiles(latencies), coverage(lists, len(engine.catalog)),
                     novelty(lists, counts))


def _recommend(engine: Engine, user: str, weights: dict[str, float]) -> list[Any]:
    """engine.recommend with the model's fusion weights (the served path otherwise)."""
    if weights == engine.settings.source_weights:
        return engine.recommend(user, 10).items
    ctx = engine.user_context(user)
    fused = engine.fuse(ctx, weights, depth=50)
    return [_Item(engine.catalog.ids[item]) for item, _, _ in fused.top(10)]


@dataclass
class _Item:
    item_id: str
