"""Training what orders the served list, from the event log, without leakage.

Each user's latest positive visits are their labels: the last one, and with a
behaviour model whose network never trained on the last `holdout_tail` visits
(models/sequential/) each positive one among them — several examples per user
where histories are long and users few. For each depth the online state is
*rewound*: a fresh state over the same catalogue replays every event except each
user's events from that depth's label on, so co-visitation, popularity, profiles,
ALS and the user's own sequence are what they were just before the label — nothing
the label caused is visible to its features. The behaviour model may score there
because its network never learned those visits; its transition prior, which does
count them, is recounted without them.

From the same examples come the three regimes of ranking/model.py: the LightGBM
ranker (enough users), fusion weights fitted by coordinate ascent (a few), or the
configured weights (too few); each is measured on held-out users (5-fold
cross-validation while examples are few) and the best serves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kairos.config import Settings
from kairos.models.als import AlsConfig, AlsModel
from kairos.ranking.features import FEATURES, RANKED_SOURCES, pool_features
from kairos.ranking.fusion import RRF_K
from kairos.ranking.learned import LearnedRanker
from kairos.ranking.model import RankingModel, new_version
from kairos.schema import NON_VISIT_TYPES
from kairos.sources import build_sources
from kairos.sources.base import UserContext
from kairos.state.catalog import Catalog
from kairos.state.online import OnlineState
from kairos.store.base import EventRecord

log = logging.getLogger(__name__)

TRAINING_DEPTH = 60  # candidates per source, as a served list of 20 asks (serving/recommend.py: CANDIDATE_DEPTH)
VALID_SHARE = 0.2
CV_FOLDS = 5
CV_BELOW = 2000  # examples: below this, regimes and tree sizes are chosen by 5-fold cross-validation
DEPTH_WITHOUT_MODEL = 3  # label depth when no behaviour model scores (nothing can have learned them)
LEAVES = (3, 7, 15)  # tree sizes the held-out users choose between
WEIGHT_GRID = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass
class RankingInputs:
    """What training reads of a live engine (passed in: ranking never imports the engine)."""

    settings: Settings
    catalog: Catalog
    events: Sequence[EventRecord]  # the whole log, in acknowledgement order
    semantic: Any = None  # SemanticState or None
    sequential: Any = None  # ServedSequential or None (trained with holdout)
    exclude_seen: bool = True  # as the served lists are asked for


@dataclass
class Examples:
    """One row block per user whose label some source proposed."""

    features: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    fusion_terms: list[np.ndarray] = field(default_factory=list)  # (pool, sources): 1 / (K + rank)
    owners: list[str] = field(default_factory=list)  # each block's user: folds split users, not blocks
    users: int = 0  # labels asked about
    found: int = 0  # ... found in the pool

    def subset(self, rows: np.ndarray) -> Examples:
        return Examples([self.features[i] for i in rows], [self.labels[i] for i in rows],
                        [self.fusion_terms[i] for i in rows], [self.owners[i] for i in rows],
                        len(rows), len(rows))

    def extend(self, other: Examples) -> None:
        self.features += other.features
        self.labels += other.labels
        self.fusion_terms += other.fusion_terms
        self.owners += other.owners
        self.users += other.users
        self.found += other.found

    def stacked(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.concatenate(self.features), np.concatenate(self.labels),
                np.array([len(x) for x in self.labels]))


@dataclass
class Labels:
    """One depth's labels: user -> position of their label in the log, and the
    positions the rewound state must not see (each labelled user's events from it on)."""

    positions: dict[str, int]
    hidden: set[int]


def labels_of(events: Sequence[EventRecord], settings: Settings, depth: int = 1) -> list[Labels]:
    """Per depth j = 1..depth: each user's j-th last visit when it is positive and a
    visit precedes it. Visits are ordered as the behaviour model's sequences are
    (timestamp, then acknowledgement), so depth j lies in the tail its network never saw."""
    visits: dict[str, list[tuple[float, int]]] = {}
    for position, event in enumerate(events):
        if event.type not in NON_VISIT_TYPES:
            visits.setdefault(event.user_id, []).append((event.timestamp, position))
    ordered = {user: sorted(steps) for user, steps in visits.items()}
    found: list[Labels] = []
    for j in range(1, depth + 1):
        cut: dict[str, tuple[float, int]] = {}
        positions: dict[str, int] = {}
        for user, steps in ordered.items():
            if len(steps) <= j:
                continue
            cut[user] = steps[-j]
            event = events[steps[-j][1]]
            if settings.event_weight(event.type, event.value) > 0:
                positions[user] = steps[-j][1]
        hidden = {position for position, event in enumerate(events)
                  if event.user_id in cut and (event.timestamp, position) >= cut[event.user_id]}
        found.append(Labels(positions, hidden))
    return found


def label_depth(sequential: Any) -> int:
    """How many of each user's latest visits may serve as labels."""
    if sequential is None:
        return DEPTH_WITHOUT_MODEL
    return int(getattr(sequential.model.config, "holdout_tail", 1))


def rewound_state(inputs: RankingInputs, skip: set[int]) -> tuple[OnlineState, list[EventRecord]]:
    """A state over the same catalogue that saw every event except those at `skip`."""
    state = OnlineState(inputs.settings, inputs.catalog)
    kept = [e for i, e in enumerate(inputs.events) if i not in skip]
    state.apply(kept)
    if inputs.semantic is not None:
        state.semantic = inputs.semantic.detached()
        state.semantic.apply(kept, inputs.settings.event_weight)
    if inputs.sequential is not None:
        # The served model's transition prior counted the labels: recount it without them.
        visits: dict[str, list[tuple[float, int, int]]] = {}
        for position, event in enumerate(inputs.events):
            if position not in skip and event.type not in NON_VISIT_TYPES:
                visits.setdefault(event.user_id, []).append(
                    (event.timestamp, position, inputs.catalog.index[event.item_id]))
        state.sequential = inputs.sequential.with_prior_from(
            {user: [item for *_, item in sorted(steps)] for user, steps in visits.items()})
    return state, kept


def fit_als(events: Sequence[EventRecord], catalog: Catalog, settings: Settings) -> AlsModel:
    return AlsModel.fit(events, catalog.index, len(catalog), settings.event_weight,
                        AlsConfig.from_json(settings.als_config))


def collect_examples(state: OnlineState, inputs: RankingInputs, labels: dict[str, EventRecord],
                     advance: Callable[[int], None] | None = None) -> Examples:
    settings = inputs.settings
    sources = build_sources(state, settings)
    names = [name for name in RANKED_SOURCES if name in sources and
             (settings.source_weights.get(name, 0.0) > 0 or (name == "als" and state.als is not None))]
    examples = Examples()
    for user_id, label in labels.items():
        examples.users += 1
        ctx = _context(state, user_id, label.timestamp, inputs.exclude_seen)
        target = state.catalog.index[label.item_id]
        if ctx.allowed[target]:
            ranked = {name: sources[name].candidates(ctx, TRAINING_DEPTH) for name in names}
            pool = pool_features(state, ctx, ranked)
            hit = pool.items == target
            if hit.any():
                examples.found += 1
                examples.features.append(pool.features)
                examples.labels.append(hit.astype(np.float32))
                terms = np.zeros((len(pool.items), len(RANKED_SOURCES)), dtype=np.float64)
                for column, name in enumerate(RANKED_SOURCES):
                    if name in ranked and len(ranked[name].items):
                        where = np.searchsorted(pool.items, ranked[name].items)
                        terms[where, column] = 1.0 / (RRF_K + 1.0 + np.arange(len(where)))
                examples.fusion_terms.append(terms)
                examples.owners.append(user_id)
        if advance is not None:
            advance(1)
    return examples


def _context(state: OnlineState, user_id: str, now: float, exclude_seen: bool) -> UserContext:
    user = state.users.get(user_id)
    allowed = state.catalog.available.copy()
    if exclude_seen and user is not None and user.seen:
        allowed[np.fromiter(user.seen, dtype=np.int64, count=len(user.seen))] = False
    return UserContext(user_id, now, user, allowed)


def ndcg_at_10(scores: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> np.ndarray:
    """Per example: 1 / log2(rank + 2) of the label among its pool (ties count half)."""
    out = np.zeros(len(scores))
    for i, (score, label) in enumerate(zip(scores, labels, strict=True)):
        target = score[label > 0][0]
        rank = float((score > target).sum()) + 0.5 * float((score == target).sum() - 1)
        out[i] = 1.0 / np.log2(rank + 2.0) if rank < 10 else 0.0
    return out


def fusion_ndcg(examples: Examples, weights: np.ndarray) -> np.ndarray:
    return ndcg_at_10([terms @ weights for terms in examples.fusion_terms], examples.labels)


def fit_weights(examples: Examples, start: np.ndarray, rounds: int = 3) -> np.ndarray:
    """Coordinate ascent over a grid, one source at a time, on mean NDCG@10."""
    weights = start.copy()
    best = fusion_ndcg(examples, weights).mean()
    for _ in range(rounds):
        improved = False
        for column in range(len(weights)):
            for value in WEIGHT_GRID:
                trial = weights.copy()
                trial[column] = value
                if not trial.any():
                    continue
                score = fusion_ndcg(examples, trial).mean()
                if score > best + 1e-9:
                    best, weights, improved = score, trial, True
        if not improved:
            break
    return weights


def _folds(owners: Sequence[str], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, held-out rows) pairs, splitting users (a user's examples at several
    depths stay on one side): 5-fold cross-validation while examples are few (one 20%
    split chooses by noise there), one held-out share beyond CV_BELOW."""
    users = sorted(set(owners))
    if len(users) < 2:
        return []
    order = [users[i] for i in np.random.default_rng(seed).permutation(len(users))]
    rows_of: dict[str, list[int]] = {}
    for row, owner in enumerate(owners):
        rows_of.setdefault(owner, []).append(row)

    def rows(group: Sequence[str]) -> np.ndarray:
        return np.array(sorted(r for user in group for r in rows_of[user]), dtype=np.int64)

    if len(owners) >= CV_BELOW:
        cut = max(1, round(len(users) * VALID_SHARE))
        return [(rows(order[cut:]), rows(order[:cut]))]
    parts = [list(part) for part in np.array_split(np.array(order, dtype=object), min(CV_FOLDS, len(users)))]
    return [(rows([u for j, q in enumerate(parts) if j != i for u in q]), rows(part))
            for i, part in enumerate(parts)]


def _mean(per_fold: list[np.ndarray]) -> float:
    return float(np.concatenate(per_fold).mean())


def train_ranking(inputs: RankingInputs, seed: int = 0, quiet: bool = True) -> RankingModel:
    """Rewind, collect examples, measure each regime on held-out users, keep the best."""
    from kairos.progress import progress

    started = time.perf_counter()
    settings = inputs.settings
    depth = label_depth(inputs.sequential)
    depths = labels_of(inputs.events, settings, depth)
    users = sorted(set().union(*(labels.positions for labels in depths)))
    if len(users) > settings.ranker_max_users:
        users = sorted(np.random.default_rng(seed).choice(users, settings.ranker_max_users, replace=False).tolist())
    examples, als_seconds = Examples(), 0.0
    asked_count = sum(user in labels.positions for labels in depths for user in users)
    with progress("ranker examples", asked_count, quiet=quiet) as advance:
        for labels in depths:
            state, kept = rewound_state(inputs, labels.hidden)
            als_started = time.perf_counter()
            state.als = fit_als(kept, inputs.catalog, settings) if kept else None
            als_seconds += time.perf_counter() - als_started
            asked = {user: inputs.events[labels.positions[user]] for user in users if user in labels.positions}
            examples.extend(collect_examples(state, inputs, asked, advance))
    configured = np.array([settings.source_weights.get(name, 0.0) for name in RANKED_SOURCES])
    report: dict[str, Any] = {"labelled_users": len(users), "label_depth": depth, "labels": examples.users,
                              "examples": examples.found, "recall": round(examples.found / max(examples.users, 1), 4),
                              "exclude_seen": inputs.exclude_seen}
    mode, weights, ranker = "configured", configured, None
    folds = _folds(examples.owners, seed)
    held_out: dict[str, float] = {}
    n_valid = sum(len(valid) for _, valid in folds)
    if folds:
        held_out["configured"] = _mean([fusion_ndcg(examples.subset(v), configured) for _, v in folds])
    if examples.found >= settings.fusion_fit_min_examples and folds:
        held_out["fitted"] = _mean([fusion_ndcg(examples.subset(v), fit_weights(examples.subset(t), configured))
                                    for t, v in folds])
        if held_out["fitted"] > held_out["configured"]:
            mode, weights = "fitted", fit_weights(examples, configured)
    if examples.found >= settings.ranker_min_examples and folds:
        # Capacity by held-out users: a few hundred examples want stumps, thousands more.
        tried: dict[int, tuple[float, int]] = {}
        for leaves in LEAVES:
            params = {"num_leaves": leaves, **settings.ranker_config}
            scores, rounds_seen = [], []
            for t, v in folds:
                train, valid = examples.subset(t), examples.subset(v)
                learned, rounds = LearnedRanker.fit(*train.stacked(), valid.stacked(), params)
                scores.append(ndcg_at_10([learned.booster.predict(x, num_iteration=rounds)
                                          for x in valid.features], valid.labels))
                rounds_seen.append(rounds)
            tried[leaves] = (_mean(scores), int(np.median(rounds_seen)))
        leaves = max(tried, key=lambda k: tried[k][0])
        held_out["learned"], rounds = tried[leaves]
        report.update({"rounds": rounds, "num_leaves": leaves, "folds": len(folds),
                       "tried": {str(k): round(v, 4) for k, (v, _) in tried.items()}})
        beats_fusion = held_out["learned"] >= max(v for k, v in held_out.items() if k != "learned")
        if beats_fusion or settings.ranker == "learned":
            ranker, _ = LearnedRanker.fit(*examples.stacked(), params={"num_leaves": leaves, **settings.ranker_config},
                                          rounds=rounds)
            mode = "learned"
            report["importance"] = ranker.importance()
    # Served: the ALS fitted on the whole log (the rewound one saw less).
    full_als = fit_als(inputs.events, inputs.catalog, settings) if inputs.events else None
    report.update({"held_out_ndcg@10_in_pool": {k: round(v, 4) for k, v in held_out.items()},
                   "held_out_users": n_valid, "als_fit_seconds": round(als_seconds, 2),
                   "training_seconds": round(time.perf_counter() - started, 1), "features": len(FEATURES)})
    named = {name: float(w) for name, w in zip(RANKED_SOURCES, weights, strict=True)
             if w > 0 or settings.source_weights.get(name, 0.0) > 0}
    if mode == "configured":
        named = dict(settings.source_weights)
    sequential_version = getattr(inputs.sequential, "version", None)
    log.info("ranking %s: %d examples, held-out %s", mode, examples.found, report["held_out_ndcg@10_in_pool"])
    return RankingModel(new_version(), mode, named, ranker, full_als, sequential_version, report)  # type: ignore[arg-type]
