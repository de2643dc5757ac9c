"""A recommendation: the user's context, every weighted source's candidates, fusion (or
the learned ranker over them), optional diversification, the cold-start and new-arrival
slots, the list rules (the language model's re-ranking) and a reason for each item."""

from __future__ import annotations

import uuid
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from kairos.ranking import Fused, reciprocal_rank_fusion
from kairos.ranking.arrivals import new_arrival_slot
from kairos.ranking.fusion import RRF_K
from kairos.ranking.prior import PRIOR_RRF_K, prior_weights
from kairos.schema import Recommendations, RecommendedItem
from kairos.serving.cache import ResultCache
from kairos.serving.view import ServingView
from kairos.sources import UserContext

# How many candidates each source proposes per item asked for (fusion needs depth).
CANDIDATE_DEPTH = 3

Ranked = list[tuple[int, float, list[str]]]  # (item, score, sources), best first


@dataclass(frozen=True)
class ServedList:
    items: list[RecommendedItem]
    model_version: str
    sources: list[str]


class Recommender:
    def __init__(self, view: ServingView) -> None:
        self.view = view
        self.cache: ResultCache[ServedList] = ResultCache(view.settings.result_cache_ttl_s,
                                                         view.settings.result_cache_size)

    def recommend(
        self,
        user_id: str,
        n: int = 10,
        category: str | None = None,
        exclude_seen: bool = True,
        request_id: str | None = None,
        diversity: float = 0.0,
        apply_rules: bool = True,
        weights: dict[str, float] | None = None,
        ranker: bool = True,
    ) -> Recommendations:
        """`weights` and `ranker` override what the service would use (an experiment's arm);
        `apply_rules`: False leaves the list rules out (what they re-rank is this list)."""
        view = self.view
        view.catch_up()
        with view.lock:
            key = self._cache_key(user_id, n, category, exclude_seen, diversity, apply_rules, weights, ranker)
            served = self.cache.get(key) if key is not None else None
            if served is None:
                served = self._rank(user_id, n, category, exclude_seen, diversity, apply_rules, weights, ranker)
                if key is not None:
                    self.cache.put(key, served)
        return Recommendations(user_id=user_id, items=served.items, model_version=served.model_version,
                               request_id=request_id or uuid.uuid4().hex, sources=served.sources)

    def _cache_key(self, user_id: str, n: int, category: str | None, exclude_seen: bool, diversity: float,
                   apply_rules: bool, weights: dict[str, float] | None, ranker: bool) -> Hashable | None:
        """What the user's list depends on (serving/cache.py); None: do not cache."""
        if not self.cache.enabled:
            return None
        view = self.view
        user = view.state.users.get(user_id)
        stated = view.semantic.stated_text.get(user_id) if view.semantic is not None else None
        return (user_id, user.revision if user is not None else None, stated, view.catalog.generation,
                view.model_version, view.ranking.version if view.ranking is not None else None,
                n, category, exclude_seen, diversity, apply_rules,
                tuple(sorted(weights.items())) if weights is not None else None, ranker)

    def _rank(self, user_id: str, n: int, category: str | None, exclude_seen: bool, diversity: float,
              apply_rules: bool, weights: dict[str, float] | None, ranker: bool) -> ServedList:
        view = self.view
        with view.lock:
            ctx = self.user_context(user_id, category, exclude_seen)
            prior = weights is None and self.under_prior()
            weights = weights if weights is not None else self.fusion_weights(ctx)
            depth = max(n * CANDIDATE_DEPTH, 50)
            fused = self.fuse(ctx, weights, depth=depth, k=PRIOR_RRF_K if prior else RRF_K)
            if ranker and view.ranking is not None and view.settings.ranker != "off":
                fused = view.ranking.rescore(view.state, ctx, fused)
            if diversity > 0 and view.semantic is not None and view.semantic.index is not None:
                chosen = self.diversify(fused.top(depth), n, diversity)
            else:
                chosen = fused.top(n)
            chosen = self.cold_start_slots(chosen, fused, n)
            if prior:
                chosen = new_arrival_slot(view.catalog, ctx, chosen, fused, view.settings.cold_start_min_similarity)
            if apply_rules:
                for rule in view.list_rules:
                    chosen = rule.apply(ctx, chosen, fused, n)
            catalog = view.catalog
            items = [
                RecommendedItem(item_id=catalog.ids[item], score=score, sources=sources,
                                title=catalog.titles[item], reason=reason)
                for (item, score, sources), reason in zip(chosen, self.reasons(ctx, chosen), strict=True)
            ]
            return ServedList(items, view.model_version,
                              [name for name in view.sources if weights.get(name, 0.0) > 0])

    def under_prior(self) -> bool:
        """Too small a log to have trained anything: the prior of ranking/prior.py fuses."""
        view = self.view
        return (view.settings.ranker != "off" and view.ranking is None
                and view.state.events_applied < view.settings.sequential_min_events)

    def fusion_weights(self, ctx: UserContext | None = None) -> dict[str, float]:
        """The weights fusion uses for this request: fitted ones when the ranking model
        has them; the small-log prior (ranking/prior.py) before there is anything to fit."""
        view = self.view
        ranking = view.ranking
        configured = view.settings.source_weights
        if view.settings.ranker == "off":
            return configured
        if self.under_prior():
            visits = len(ctx.user.seen) if ctx is not None and ctx.user is not None else 0
            return prior_weights(configured, visits)
        if ranking is None or ranking.mode in ("configured", "learned"):
            return configured  # the learned ranker was trained over the configured sources' candidates
        return ranking.weights

    def user_context(self, user_id: str, category: str | None = None, exclude_seen: bool = True) -> UserContext:
        """The request as sources see it: the user's state and the filters as a mask."""
        view = self.view
        with view.lock:
            user = view.state.users.get(user_id)
            allowed = view.catalog.available.copy()
            if category is not None:
                allowed &= view.catalog.category_mask(category)
            ctx = UserContext(user_id, view.clock.now(), user, allowed, category)
            if exclude_seen and user is not None and user.seen:
                allowed[ctx.seen_items()] = False
            return ctx

    def fuse(self, ctx: UserContext, weights: dict[str, float], depth: int, k: float = RRF_K) -> Fused:
        """Ask every weighted source for `depth` candidates and fuse their ranks
        (evaluation asks for the whole catalogue to rank a target among all items)."""
        view = self.view
        with view.lock:
            ranked = {
                name: source.candidates(ctx, depth)
                for name, source in view.sources.items()
                if weights.get(name, 0.0) > 0
            }
            return reciprocal_rank_fusion(ranked, weights, k)

    def cold_start_slots(self, chosen: Ranked, fused: Fused, n: int) -> Ranked:
        """Make sure each ten of the list has, by place `cold_start_position`, an item
        nobody has engaged with yet, if one fits the user: otherwise a new arrival never
        beats items with behaviour behind them. Fit: the behaviour model proposed it (from
        its text and the user's sequence), or the semantic source finds it close to the
        user; the best fused one goes first, moving up from further down the list if it
        is there already."""
        settings = self.view.settings
        first = settings.cold_start_position
        if first == 0 or len(chosen) < first:
            return chosen
        popularity = self.view.state.popularity
        engaged = popularity.engaged
        semantic = fused.ranked.get("semantic")
        sequential = fused.ranked.get("sequential")
        parts = [sequential.items] if sequential is not None else []
        if semantic is not None:
            parts.append(semantic.items[semantic.scores >= settings.cold_start_min_similarity])
        fitting = np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)
        unengaged = fitting[~popularity.engaged_many(fitting)].tolist()
        cold = sorted(unengaged, key=lambda item: (-fused.score(item), item))
        if not cold:
            return chosen
        ranked = list(chosen)
        for place in range(first - 1, len(ranked), 10):
            block = ranked[place - first + 1 : place + 1]
            if any(not engaged(item) for item, _, _ in block):
                continue  # this ten already shows a new item by that place
            above = {item for item, _, _ in ranked[:place]}
            candidate = next((item for item in cold if item not in above), None)
            if candidate is None:
                break
            later = next((i for i, (item, _, _) in enumerate(ranked) if item == candidate), None)
            if later is not None:
                del ranked[later]
            else:
                ranked.pop()  # the list keeps its length
            sources = fused.sources_of(candidate) or ["semantic"]
            score = ranked[place][1] if place < len(ranked) else (ranked[-1][1] if ranked else 0.0)
            ranked.insert(place, (candidate, score, sources))
        return ranked

    def reasons(self, ctx: UserContext, chosen: Ranked) -> list[str]:
        """Each item's reason: from the first of its sources that can say why it was
        proposed. A source with `explain_many` answers for all of its items in one call
        (the behaviour model's is one matrix product)."""
        batched: dict[str, dict[int, str | None]] = {}
        for name, source in self.view.sources.items():
            explain_many = getattr(source, "explain_many", None)
            if explain_many is not None:
                mine = list(dict.fromkeys(item for item, _, sources in chosen if name in sources))
                if mine:
                    batched[name] = dict(zip(mine, explain_many(ctx, mine), strict=True))
        reasons: list[str] = []
        for item, _, sources in chosen:
            reason = None
            for name in sources:
                if name in batched:
                    reason = batched[name].get(item)
                else:
                    explain = getattr(self.view.sources.get(name), "explain", None)
                    reason = explain(ctx, item) if explain else None
                if reason:
                    break
            reasons.append(reason or "")
        return reasons

    def diversify(self, ranked: Ranked, n: int, diversity: float) -> Ranked:
        """Maximal marginal relevance (Carbonell & Goldstein, 1998) on text embeddings:
        each pick maximises (1 - diversity) * relevance - diversity * max similarity to
        the picks so far. Items without an embedding only compete on relevance."""
        semantic = self.view.semantic
        assert semantic is not None and semantic.index is not None
        if not ranked:
            return []
        top_score = ranked[0][1] or 1.0
        vectors = [semantic.item_vector(item) for item, _, _ in ranked]
        chosen: list[int] = []
        remaining = list(range(len(ranked)))
        while remaining and len(chosen) < n:
            def value(i: int) -> float:
                similarity = max((float(vectors[i] @ vectors[j]) for j in chosen
                                  if vectors[i] is not None and vectors[j] is not None), default=0.0)
                return (1 - diversity) * ranked[i][1] / top_score - diversity * similarity
            best = max(remaining, key=value)
            chosen.append(best)
            remaining.remove(best)
        return [ranked[i] for i in chosen]
