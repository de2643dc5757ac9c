"""Features of (user, candidate) pairs for the learned ranker.

A request's candidate pool is the union of what the sources proposed (already
filtered by the request's mask). Every feature is read from the online state the
sources read, so in training — where that state is rewound to just before each
user's label event — nothing the label caused is visible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kairos.schema import EventType
from kairos.sources.base import Candidates, UserContext
from kairos.state.online import OnlineState

# Sources the ranker reads, in column order; one absent from a request is missing.
RANKED_SOURCES = ("sequential", "covisit", "semantic", "als", "popular", "fresh", "llm")
EVENT_TYPES = [str(t) for t in EventType]
RECENT_FOR_MATCH = 10  # latest visits a candidate's categories are compared with
RECENT_FOR_TEXT = 5  # latest visits whose mean text vector a candidate is compared with
DAY = 86_400.0

FEATURES = (
    *(f"{source}_{part}" for source in RANKED_SOURCES for part in ("score", "reciprocal_rank", "present")),
    "sources_proposing",
    "popularity", "trend", "age_days", "seen",
    "category_match", "text_profile", "text_recent",
    "history_length", "hours_between_last_two", "last_event_type", "last_event_weight",
)
CATEGORICAL = ("last_event_type",)
# Bumped when a feature's meaning changes: a ranker trained on another version is not
# served (the background trainer trains a new one). 2: `popular_score` is a share.
FEATURES_VERSION = 2


@dataclass(slots=True)
class Pool:
    """One request's candidates (catalogue indices) and their feature rows."""

    items: np.ndarray
    features: np.ndarray  # (len(items), len(FEATURES)), float32, NaN = missing


def candidate_pool(ranked: dict[str, Candidates]) -> np.ndarray:
    """Every item some source proposed, in catalogue order (deterministic)."""
    parts = [c.items for c in ranked.values() if len(c.items)]
    return np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)


def pool_features(state: OnlineState, ctx: UserContext, ranked: dict[str, Candidates],
                  items: np.ndarray | None = None) -> Pool:
    items = candidate_pool(ranked) if items is None else items
    n = len(items)
    columns: list[np.ndarray] = []
    proposing = np.zeros(n, dtype=np.float32)
    for source in RANKED_SOURCES:
        score = np.full(n, np.nan, dtype=np.float32)
        reciprocal = np.zeros(n, dtype=np.float32)
        found = ranked.get(source)
        if found is not None and len(found.items):
            where = np.searchsorted(items, found.items)
            inside = (where < n) & (items[np.minimum(where, n - 1)] == found.items)
            positions = np.flatnonzero(inside)
            score[where[inside]] = found.scores[positions]
            reciprocal[where[inside]] = 1.0 / (1.0 + positions)
        present = (reciprocal > 0).astype(np.float32)
        proposing += present
        columns += [score, reciprocal, present]
    columns.append(proposing)
    columns += _item_columns(state, ctx, items)
    columns += _user_columns(ctx, n)
    return Pool(items, np.column_stack(columns).astype(np.float32) if n else np.zeros((0, len(FEATURES)),
                                                                                        dtype=np.float32))


def _item_columns(state: OnlineState, ctx: UserContext, items: np.ndarray) -> list[np.ndarray]:
    n_catalog = len(state.catalog)
    pop_share = state.popularity.values(items) / max(state.popularity.total(), 1e-12)
    trend_share = state.trending.values(items) / max(state.trending.total(), 1e-12)
    eps = 1.0 / max(n_catalog, 1) ** 2
    user = ctx.user
    # Times are read against the user's latest event, not the clock: the same in training
    # (rewound to just before a label) and serving, offline or live.
    reference = user.recent[-1].timestamp if user is not None and user.recent else ctx.now
    age = np.maximum(reference - state.catalog.created_at[items], 0.0) / DAY
    seen = np.zeros(len(items))
    match = np.zeros(len(items))
    if user is not None:
        if user.seen:
            visited = np.zeros(n_catalog, dtype=bool)
            visited[ctx.seen_items()] = True
            seen = visited[items].astype(float)
        recent = user.recent_visits(RECENT_FOR_MATCH)
        if recent:
            counts: dict[str, int] = {}
            for step in recent:
                for name in state.catalog.categories[step.item]:
                    counts[name] = counts.get(name, 0) + 1
            if counts:
                codes, code_of = state.catalog.category_codes()
                shares = np.zeros(len(code_of) + 1)  # the last slot: the -1 padding, count 0
                for name, count in counts.items():
                    shares[code_of[name]] = count
                match = shares[codes[items]].max(1) / len(recent)
    text_profile, text_recent = _text_columns(state, ctx, items)
    return [np.log1p(pop_share * n_catalog), np.log((trend_share + eps) / (pop_share + eps)), np.log1p(age),
            seen, match, text_profile, text_recent]


def _text_columns(state: OnlineState, ctx: UserContext, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    missing = np.full(len(items), np.nan)
    semantic = state.semantic
    if semantic is None or semantic.index is None or not len(items):
        return missing, missing.copy()
    vectors = semantic.index.vectors_of(items)
    has_text = np.abs(vectors).sum(1) > 0
    profile = semantic.profile(ctx.user_id)
    by_profile = np.where(has_text, vectors @ profile, np.nan) if profile is not None else missing
    by_recent = missing.copy()
    if ctx.user is not None:
        recent = [step.item for step in ctx.user.recent_visits(RECENT_FOR_TEXT)]
        if recent:
            mean = semantic.index.vectors_of(np.array(recent)).sum(0)
            norm = float(np.linalg.norm(mean))
            if norm > 0:
                by_recent = np.where(has_text, vectors @ (mean / norm), np.nan)
    return by_profile, by_recent


def _user_columns(ctx: UserContext, n: int) -> list[np.ndarray]:
    user = ctx.user
    if user is None or not user.recent:
        values = [0.0, np.nan, np.nan, np.nan]
    else:
        last = user.recent[-1]
        code = EVENT_TYPES.index(last.type) if last.type in EVENT_TYPES else len(EVENT_TYPES)
        gap = np.log1p(max(last.timestamp - user.recent[-2].timestamp, 0.0) / 3600.0) if len(user.recent) > 1 else np.nan
        values = [np.log1p(user.event_count), gap, float(code), last.weight]
    return [np.full(n, value, dtype=np.float32) for value in values]
