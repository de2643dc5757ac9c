"""Evaluation protocols, all driven through the same Engine that serves.

Leave-one-out, full ranking (SASRec / BERT4Rec / LlamaRec protocol): per user, the
last event is the test target and the one before it the validation target. The
engine ingests every other event in time order — exactly the state a live engine
would have just before the held-out event — and each model ranks the target
against *all* items, no sampled negatives.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kairos.clock import SimulatedClock
from kairos.config import Settings
from kairos.engine import Engine
from kairos.evaluation.data import SCRATCH, EvalData
from kairos.evaluation.metrics import (
    coverage,
    intra_list_diversity,
    mean_metrics,
    novelty,
    rank_metrics,
    target_rank,
)
from kairos.progress import progress
from kairos.sources.base import top_k
from kairos.store import EventRecord
from kairos.training.registry import RegisteredModel

BASELINES = ("random", "popular", "covisit")
SERVED_DEPTH = 20  # the `kairos` model is scored on its served list this deep (HR@20)
# The served list with the generative model in the loop (kairos.llm), each compared with
# `kairos` by a paired bootstrap of NDCG@10, overall and for users with short histories.
LLM_MODELS = ("kairos+llm-rerank", "kairos+llm-generate", "kairos+llm-rerank-tuned")
SHORT_HISTORY = 5  # events: "cold users" in the split by history length
# Served lists: `kairos` as served (the ranking model trained inside the run orders it),
# `fusion` the same list with the configured fusion weights instead.
SERVED_MODELS = ("kairos", "fusion", *LLM_MODELS)


def model_weights(name: str, settings: Settings) -> dict[str, float] | None:
    """Fusion weights of a model by name; None for `random`. `kairos` is the served
    default fusion; any source name alone is that source."""
    if name == "random":
        return None
    if name in SERVED_MODELS:
        return dict(settings.source_weights)
    return {name: 1.0}


def uses_ranking(models: list[str]) -> bool:
    """Whether the run trains the ranking model (and ALS): served lists and `als` read it."""
    return bool(set(models) & {"kairos", "als", *LLM_MODELS})


def uses_sequential(models: list[str], settings: Settings) -> bool:
    """Whether any of these models reads the behaviour model (which then has to be trained)."""
    served = bool(set(SERVED_MODELS) & set(models)) or uses_ranking(models)
    return "sequential" in models or (served and settings.source_weights.get("sequential", 0.0) > 0)


# Trained behaviour models by what they were trained on: both history conventions of
# one leave-one-out run, or every engine of one replay, serve the same model.
_TRAINED: dict[tuple[str, ...], RegisteredModel | None] = {}


def train_sequential_for(engine: Engine, key: tuple[str, ...], overrides: dict[str, Any] | None = None,
                         quiet: bool = False) -> RegisteredModel | None:
    """Train the behaviour model on what the engine's store holds now (the protocol's
    training events: the same pipeline as `kairos train`) and serve it; None when
    there is too little behaviour to train on. `key` names the training events."""
    from kairos.training.pipeline import NotEnoughData, as_registered, train_from_store

    key = (*key, json.dumps(overrides or {}, sort_keys=True), json.dumps(engine.settings.sequential_config,
                                                                         sort_keys=True))
    if key not in _TRAINED:
        embed = engine.semantic.embed if engine.semantic is not None else None
        try:
            run = train_from_store(engine.store, engine.settings, embed, overrides=overrides, quiet=quiet)
            _TRAINED.clear()  # keep one: models hold their item tables
            _TRAINED[key] = as_registered(run)
        except NotEnoughData:
            _TRAINED[key] = None
    registered = _TRAINED[key]
    if registered is not None:
        engine.install_model(registered)
    return registered


def training_report(registered: RegisteredModel | None) -> dict[str, Any]:
    """What evaluation results record of the behaviour model they measured."""
    if registered is None:
        return {}
    model = registered.model
    return {"version": model.version, "preset": registered.training.get("preset"),
            "training_seconds": round(model.training_seconds, 1),
            "valid": {k: v for k, v in model.metrics.items() if k != "history"},
            "config": dict(vars(model.config))}


def offline_settings(db_path: Path) -> Settings:
    """Offline datasets span years and hold each user's targets at different times, so
    one global 'now' decay would be arbitrary: count interactions without decay, every
    event an interaction of weight 1 (LlamaRec: every rating is an interaction)."""
    return Settings(
        **SCRATCH, db_path=db_path, sqlite_synchronous="NORMAL",
        popularity_half_life_s=0, covisit_half_life_s=0,
        rating_positive_weight=1.0, rating_neutral_weight=1.0, rating_negative_weight=1.0,
    )


@dataclass
class ModelResult:
    metrics: dict[str, float]
    beyond: dict[str, float]
    latency_ms: dict[str, float]


@dataclass
class LooResult:
    dataset: str
    split: str
    mask_history: bool
    users: int
    items: int
    train_events: int
    cold_items: int = 0  # > 0: the cold-start variant
    models: dict[str, ModelResult] = field(default_factory=dict)
    sequential: dict[str, Any] = field(default_factory=dict)  # the behaviour model measured, if any
    paired: dict[str, dict[str, Any]] = field(default_factory=dict)  # "kairos+llm-x - kairos" -> NDCG@10 diff
    llm: dict[str, Any] = field(default_factory=dict)  # the language model measured, if any
    ranking: dict[str, Any] = field(default_factory=dict)  # the ranking model trained in the run, if any

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": "coldstart" if self.cold_items else "loo", "cold_items": self.cold_items,
            "dataset": self.dataset, "split": self.split,
            "mask_history": self.mask_history, "users": self.users, "items": self.items,
            "train_events": self.train_events, "sequential_model": self.sequential,
            "models": {name: {"metrics": r.metrics, "beyond_accuracy": r.beyond, "latency_ms": r.latency_ms}
                       for name, r in self.models.items()},
            "paired": self.paired, "llm": self.llm, "ranking": self.ranking,
        }


def split_leave_one_out(events: list[EventRecord], split: str) -> tuple[list[EventRecord], dict[str, EventRecord]]:
    """(events the engine may see, held-out target per user). Users with fewer than
    three events have no train/valid/test triple and are not evaluated."""
    per_user: dict[str, list[int]] = defaultdict(list)
    for position, event in enumerate(events):
        per_user[event.user_id].append(position)
    drop: set[int] = set()
    targets: dict[str, EventRecord] = {}
    for user, positions in per_user.items():
        if len(positions) < 3:
            continue
        test, valid = positions[-1], positions[-2]
        if split == "test":
            targets[user] = events[test]
            drop.add(test)
        else:
            targets[user] = events[valid]
            drop.update((test, valid))
    return [e for i, e in enumerate(events) if i not in drop], targets


def leave_one_out(
    data: EvalData,
    models: list[str],
    mask_history: bool,
    split: str = "test",
    seed: int = 0,
    max_users: int | None = None,
    quiet: bool = False,
    audit: Callable[[Engine, EventRecord], None] | None = None,
    cold_share: float = 0.0,
    sequential: dict[str, Any] | None = None,
) -> LooResult:
    """`cold_share` > 0 is the cold-start protocol: that share of items (seeded) is
    held out of training entirely — no event of theirs reaches the engine — and only
    users whose target is such a cold item are evaluated. When a model reads the
    sequential source, the behaviour model is trained on the training events first
    (`sequential`: SeqRecConfig fields over the preset)."""
    if split not in ("test", "valid"):
        raise ValueError("split must be 'test' or 'valid'")
    if not 0 <= cold_share < 1:
        raise ValueError("cold_share must be within [0, 1)")
    train, targets = split_leave_one_out(data.events, split)
    cold: set[str] = set()
    if cold_share > 0:
        items = sorted({e.item_id for e in data.events})
        cold = set(np.random.default_rng(seed).choice(items, int(len(items) * cold_share), replace=False).tolist())
        train = [e for e in train if e.item_id not in cold]
        targets = {u: e for u, e in targets.items() if e.item_id in cold}
    with tempfile.TemporaryDirectory(prefix="kairos-loo-") as scratch:
        settings = offline_settings(Path(scratch) / "loo.db")
        clock = SimulatedClock(train[-1].timestamp if train else 0.0)
        engine = Engine(settings, clock=clock)
        engine.upsert_items(_items_as_models(data, train))
        for start in range(0, len(train), 10_000):
            engine.ingest_records(train[start : start + 10_000])
        key = ("loo", data.name, data.fingerprint(), split, str(cold_share), str(seed))
        registered = (train_sequential_for(engine, key, sequential, quiet)
                      if uses_sequential(models, settings) else None)
        if uses_ranking(models) and settings.ranker != "off":
            from kairos.training.ranking import train_ranking_for

            # Trained on each user's last training event (the validation target), rewound.
            ranking = train_ranking_for(engine, exclude_seen=mask_history, quiet=quiet)
        else:
            ranking = None
        users = sorted(targets)
        if max_users is not None and max_users < len(users):
            users = sorted(np.random.default_rng(seed).choice(users, max_users, replace=False).tolist())
        n_items = len(engine.catalog)
        counts = _interaction_counts(engine, train)
        categories = [frozenset(c) for c in engine.catalog.categories]
        result = LooResult(data.name, split, mask_history, len(users), n_items, len(train), len(cold),
                           sequential=training_report(registered),
                           ranking=ranking.describe() if ranking is not None else {})
        llm = _llm_for(engine, models, result)
        ndcg: dict[str, np.ndarray] = {}
        history = np.array([engine.state.users[u].event_count if u in engine.state.users else 0 for u in users])
        for name in models:
            service = _llm_service(engine, llm, name, result) if name in LLM_MODELS and llm is not None else None
            weights = model_weights(name, settings)
            if name == "fusion":
                engine.ranking = None  # the configured weights; the ALS factors stay
            rng = np.random.default_rng(seed)
            rows, lists, latencies = [], [], []
            with progress(f"leave-one-out {name}", len(users), quiet=quiet) as advance:
                for user in users:
                    if audit is not None:
                        audit(engine, targets[user])
                    target = engine.catalog.index[targets[user].item_id]
                    started = time.perf_counter()
                    ctx = engine.user_context(user, exclude_seen=mask_history)
                    if weights is None:
                        scores = rng.random(n_items)
                    elif len(weights) == 1:
                        # One source: its own scores, so its ties stay ties (fusion's
                        # ranks would break them by catalogue order).
                        found = engine.sources[name].candidates(ctx, n_items)
                        scores = np.zeros(n_items)
                        scores[found.items] = found.scores
                    else:
                        fused = engine.fuse(ctx, weights, depth=n_items)
                        scores = np.zeros(n_items)
                        scores[fused.items] = fused.scores
                    candidates = ctx.allowed if mask_history else None
                    if candidates is not None:
                        scores = np.where(candidates, scores, -1.0)
                    greater, tied = target_rank(scores, target, candidates)
                    top = top_k(scores + 1.0, 10).items.tolist()  # +1: zero scores still rank
                    if name in SERVED_MODELS:
                        # The served list (with its list-level rules, e.g. cold-start slots,
                        # the model's order or its source) decides the top places; the fused
                        # scores rank the rest.
                        if service is not None:
                            service.refresh(user)
                        served = [engine.catalog.index[i.item_id] for i in
                                  engine.recommend(user, SERVED_DEPTH, exclude_seen=mask_history).items]
                        greater, tied = ((served.index(target), 0) if target in served
                                         else (max(greater, SERVED_DEPTH), tied))
                        top = served[:10]
                    latencies.append(time.perf_counter() - started)
                    rows.append(rank_metrics(greater, tied))
                    lists.append(top)
                    advance(1)
            if service is not None:
                service.detach()
            engine.ranking = ranking
            ndcg[name] = np.array([r["NDCG@10"] for r in rows])
            result.models[name] = ModelResult(
                metrics=mean_metrics(rows),
                beyond={
                    "coverage@10": coverage(lists, n_items),
                    "novelty@10": novelty(lists, counts),
                    "diversity@10": intra_list_diversity(lists, categories),
                },
                latency_ms=_percentiles(latencies),
            )
        engine.close()
    if "kairos" in ndcg:
        for name in ndcg:  # what is served against each part of it
            if name != "kairos" and name not in LLM_MODELS:
                result.paired[f"kairos - {name}"] = {"all": paired_difference(ndcg["kairos"], ndcg[name], seed)}
        for name in LLM_MODELS:
            if name in ndcg:
                result.paired[f"{name} - kairos"] = {
                    "all": paired_difference(ndcg[name], ndcg["kairos"], seed),
                    f"history<={SHORT_HISTORY}": paired_difference(ndcg[name][history <= SHORT_HISTORY],
                                                                    ndcg["kairos"][history <= SHORT_HISTORY], seed),
                    f"history>{SHORT_HISTORY}": paired_difference(ndcg[name][history > SHORT_HISTORY],
                                                                   ndcg["kairos"][history > SHORT_HISTORY], seed)}
    return result


def paired_difference(ours: np.ndarray, theirs: np.ndarray, seed: int = 0, draws: int = 1000) -> dict[str, float]:
    """Mean of ours - theirs (per user, paired) with a 95% bootstrap interval."""
    if len(ours) == 0:
        return {"users": 0, "diff": 0.0, "low": 0.0, "high": 0.0}
    diff = ours - theirs
    boot = diff[np.random.default_rng(seed).integers(0, len(diff), size=(draws, len(diff)))].mean(1)
    low, high = np.percentile(boot, [2.5, 97.5])
    base = float(theirs.mean())
    return {"users": len(diff), "diff": float(diff.mean()), "low": float(low), "high": float(high),
            "relative": float(diff.mean()) / base if base else 0.0}


def _llm_for(engine: Engine, models: list[str], result: LooResult) -> Any:
    """The language model the kairos+llm models share (local unless KAIROS_LLM says
    openai), loaded once; None when no such model is asked for."""
    if not set(LLM_MODELS) & set(models):
        return None
    from kairos.llm.factory import load_model
    from kairos.llm.service import GENERATED

    settings = engine.settings
    started = time.perf_counter()
    model = load_model(settings.model_copy(update={"llm": settings.llm if settings.llm != "off" else "local"}))
    result.llm = {"model": model.name, "load_s": round(time.perf_counter() - started, 1),
                  "candidates": settings.llm_candidates, "blend": settings.llm_blend,
                  "generated": GENERATED, "weight": settings.llm_weight}
    return model


def _llm_service(engine: Engine, model: Any, name: str, result: LooResult) -> Any:
    """The serving path's LlmService in the model's mode, joined to this engine: each
    user's list is computed synchronously (`refresh`) and then served by `recommend`
    exactly as a request would get it. `-tuned`: a copy of the model fine-tuned first on
    the training events (`kairos train --model llm`'s examples and loss)."""
    from kairos.llm.service import LlmService

    if name == "kairos+llm-rerank-tuned":
        from kairos.llm.finetune import FinetuneConfig, examples_from, finetune
        from kairos.llm.local import LocalModel

        model = LocalModel(getattr(model, "path", None), threads=engine.settings.llm_threads)
        config = FinetuneConfig(**{"candidates": engine.settings.llm_candidates, **engine.settings.llm_finetune})
        _, result.llm["finetune"] = finetune(model, examples_from(engine, config), config)
    service = LlmService(engine, model=model, mode="generate" if name == "kairos+llm-generate" else "rerank")
    service.attach()
    engine.listeners.remove(service)  # the evaluation asks for each list itself
    return service


def _items_as_models(data: EvalData, visible: Sequence[EventRecord]) -> list[Any]:
    """The catalogue the engine ranks, each item dated by its first event the engine sees.

    Offline datasets have no arrival dates: MovieLens's are first ratings over the whole
    log, held-out targets included, and UniSRec's are the item file's order (by first
    appearance). Either would tell the `fresh` source and the ranker's item age which
    items the held-out events go to. An item with no visible event arrives at the last
    visible moment, like every other such item, so its date says nothing either."""
    from kairos.schema import Item

    # The universe ranked against: items with at least one event after filtering.
    present = {e.item_id for e in data.events}
    first: dict[str, float] = {}
    latest = 0.0
    for event in visible:
        if event.timestamp < first.get(event.item_id, float("inf")):
            first[event.item_id] = event.timestamp
        latest = max(latest, event.timestamp)
    return [
        Item(item_id=i.item_id, title=i.title, text=i.text, categories=i.categories,
             attributes=i.attributes, created_at=first.get(i.item_id, latest), available=True)
        for i in data.items if i.item_id in present
    ]


def _interaction_counts(engine: Engine, events: list[EventRecord]) -> np.ndarray:
    counts = np.zeros(len(engine.catalog))
    for event in events:
        counts[engine.catalog.index[event.item_id]] += 1
    return counts


def _percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    ms = np.array(seconds) * 1000
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean())}
