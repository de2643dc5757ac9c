"""`sequential`: the behaviour model reading the user's live sequence.

At request time the user's recent visits come from the online state, which ingest
updated synchronously, so the event acknowledged a moment ago is the last step of
the model's input. The encoder reads the sequence once per event (the user's query is
kept, under their state's revision, until their next event); each request scores every
item from it with one matrix-vector product and the transition prior; the request's
filters apply as a mask before the top k are taken. In a catalogue past
`factor_index_min_items` the candidates come from an inner-product index instead
(`ServedSequential.indexed_candidates`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

import numpy as np

from kairos.sources.base import Candidates, UserContext, action_phrase
from kairos.sources.factor_index import FactorIndex
from kairos.state.catalog import Catalog
from kairos.state.online import OnlineState
from kairos.state.users import SequenceStep
from kairos.threads import apply_torch_limit

if TYPE_CHECKING:
    import torch

    from kairos.index import InnerProductIndex
    from kairos.models import (  # torch: imported once a model serves
        StepFeatures,
        TrainedModel,
    )

EXPLAIN_FROM_LAST = 10  # recent steps searched for the one closest to the proposed item
EXPLAIN_KEY = "sequential.visits"  # UserContext.extra: what `explain` reads once per request

# catalogue index -> unit text vector, or None when the item has no text
TextVectorLookup = Callable[[int], np.ndarray | None]
QUERIES_KEPT = 100_000  # users whose query is kept (about 0.3 KB each), least recently asked go first
# Bytes of catalogue-long score rows kept (the users asked most recently): a returning
# user without a new event is scored by a lookup, not a product over the catalogue.
SCORES_KEPT_BYTES = 64 << 20
DENOMINATOR_SAMPLE = 2_048  # items whose scores estimate the softmax's denominator (a large catalogue)


class ServedSequential:
    """A trained model aligned with the live catalogue.

    The artefact names its items by id; here they map to catalogue indices. Items
    the catalogue gained after training are scored from their text alone (the
    learned projection of their embedding: `TrainedModel.text_rows`) as extra
    columns, so a new arrival can be proposed at once without touching the model,
    which stays immutable and shared. Items with neither history nor text are not.
    Model indices above `model.n_items` name those extra rows.
    """

    def __init__(self, model: TrainedModel, item_ids: list[str], catalog: Catalog,
                 text_vector: TextVectorLookup | None) -> None:
        apply_torch_limit()  # the serving process's torch threads (threads.py)
        self.model = model
        self.version = model.version
        self.catalog = catalog
        self.item_ids = item_ids
        self._text_vector_lookup = text_vector
        self._text_vector = text_vector if model.config.use_text else None
        known = {item_id: i + 1 for i, item_id in enumerate(item_ids)}
        self._model_of = np.zeros(len(catalog), dtype=np.int64)  # catalogue index -> model index (0: none)
        self._catalog_of = np.full(model.n_items + 1, -1, dtype=np.int64)  # model index -> catalogue index
        for idx, item_id in enumerate(catalog.ids):
            found = known.get(item_id)
            if found is not None:
                self._model_of[idx] = found
                self._catalog_of[found] = idx
        self._aligned = len(catalog)  # catalogue indices below this have been mapped
        self._extra: torch.Tensor | None = None  # text-only rows of items added after training
        self._extra_neighbours: np.ndarray | None = None  # their text neighbours (for the prior)
        self._vectors: np.ndarray | None = None
        self._keys: np.ndarray | None = None  # item keys (push targeting, scoring a kept query)
        self._indexed_rows = 0  # model rows in the inner-product index (a large catalogue)
        self._sample: np.ndarray | None = None  # model rows that estimate a softmax's denominator
        self._sample_baseline = np.empty(0, dtype=np.float32)
        # user -> (their state's revision, query, latest items): the encoder runs once per event
        self._queries: OrderedDict[str, tuple[Hashable, np.ndarray, np.ndarray]] = OrderedDict()
        # user -> ((revision, catalogue size, rows), their catalogue scores): once per event too
        self._scores: OrderedDict[str, tuple[Hashable, np.ndarray]] = OrderedDict()
        self._add_new_items(np.flatnonzero(self._model_of == 0))

    def with_prior_from(self, visits: dict[str, list[int]]) -> ServedSequential:
        """The same network with its transition prior counted from these visits only
        (user -> catalogue indices, oldest first): see TrainedModel.with_transitions_from."""
        self.align()
        sequences = []
        for items in visits.values():
            indices = self._model_of[np.asarray(items, dtype=np.int64)] if items else np.empty(0, dtype=np.int64)
            sequences.append(indices[(indices > 0) & (indices <= self.model.n_items)])
        return ServedSequential(self.model.with_transitions_from(sequences), self.item_ids, self.catalog,
                                self._text_vector_lookup)

    def add_items(self, keys: list[int]) -> None:
        """Represent these catalogue items from their text if the model lacks them (new
        arrivals, or items that had no text when first seen)."""
        self.align()
        self._add_new_items(np.asarray(keys, dtype=np.int64))

    def _add_new_items(self, candidates: np.ndarray) -> None:
        if self._text_vector is None or not len(candidates):
            return
        keys, vectors = [], []
        for idx in candidates.tolist():
            if self._model_of[idx] > 0:
                continue
            vector = self._text_vector(idx)
            if vector is not None:
                keys.append(idx)
                vectors.append(vector)
        if not keys:
            return
        import torch

        stacked = np.stack(vectors)
        rows = self.model.text_rows(stacked)
        neighbours = self.model.warm_neighbours(stacked)
        first = len(self._catalog_of)
        self._extra = rows if self._extra is None else torch.cat([self._extra, rows])
        self._extra_neighbours = (neighbours if self._extra_neighbours is None
                                  else np.concatenate([self._extra_neighbours, neighbours]))
        self._model_of[np.array(keys)] = np.arange(first, first + len(keys))
        self._catalog_of = np.concatenate([self._catalog_of, np.array(keys, dtype=np.int64)])
        self._vectors = self._keys = None

    def align(self) -> None:
        """Catch up with items added to the catalogue since the last request."""
        grown = len(self.catalog) - self._aligned
        if grown <= 0:
            return
        self._model_of = np.concatenate([self._model_of, np.zeros(grown, dtype=np.int64)])
        new = np.arange(self._aligned, len(self.catalog))
        self._aligned = len(self.catalog)
        self._add_new_items(new)

    def item_vectors(self) -> np.ndarray:
        """Every model index's representation as a numpy array (for explanations)."""
        if self._vectors is None:
            import torch

            table = self.model.item_table()
            self._vectors = (torch.cat([table, self._extra]) if self._extra is not None else table).numpy()
        return self._vectors

    def model_index(self, catalogue_index: int) -> int:
        return int(self._model_of[catalogue_index]) if catalogue_index < len(self._model_of) else 0

    def model_indices(self, catalogue_indices: np.ndarray) -> np.ndarray:
        """`model_index` of many (0 for items the model has no row for)."""
        inside = catalogue_indices < len(self._model_of)
        out = np.zeros(len(catalogue_indices), dtype=np.int64)
        out[inside] = self._model_of[catalogue_indices[inside]]
        return out

    def inputs(self, steps: list[SequenceStep]) -> tuple[list[int], StepFeatures | None]:
        """The model's input: the user's visits to items it was trained on, oldest first."""
        from kairos.models import StepFeatures, event_token

        visits = [s for s in steps if s.visit]
        if not visits:
            return [], None
        indices = self._model_of[np.fromiter((s.item for s in visits), dtype=np.int64, count=len(visits))]
        known = np.flatnonzero((indices > 0) & (indices <= self.model.n_items))[-self.model.config.max_len :]
        items = indices[known].tolist()
        visits = [visits[i] for i in known.tolist()]
        features = None
        if self.model.config.use_event_features:
            features = StepFeatures([event_token(s.type, s.value) for s in visits], [s.timestamp for s in visits])
        return items, features

    # -- one item for many users (push targeting) --

    def user_queries(self, step_lists: list[list[SequenceStep]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`TrainedModel.user_queries` for users given by their recent steps (see there); a
        user none of whose visits the model knows gets lse = nan."""
        self.align()
        inputs = [self.inputs(steps) for steps in step_lists]
        known = [i for i, (items, _) in enumerate(inputs) if items]
        d = self.item_keys().shape[1]
        queries = np.zeros((len(inputs), d), dtype=np.float32)
        lse = np.full(len(inputs), np.nan)
        recent = np.zeros((len(inputs), self.model.config.transition_lags), dtype=np.int64)
        if known:
            features = [inputs[i][1] for i in known]
            q, n, r = self.model.user_queries([inputs[i][0] for i in known],
                                              features if any(f is not None for f in features) else None,
                                              self._extra, self._extra_neighbours)
            queries[known], lse[known], recent[known] = q, n, r
        return queries, lse, recent

    def item_keys(self) -> np.ndarray:
        """Rows by model index (extra items included), cached until the catalogue grows."""
        self.align()
        if self._keys is None:
            self._keys = self.model.item_keys(self._extra)
        return self._keys

    # -- a large catalogue: the top candidates from an inner-product index --

    def index_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows for the inner-product index (sources/factor_index.py), keyed by catalogue
        index: each item's key with its prior without evidence appended, so that a query
        (q, 1) ranks items as for a user whose latest items lead nowhere. Items added
        after this call are scored exactly per request instead."""
        keys = self.item_keys()
        placed = np.flatnonzero(self._catalog_of[: len(keys)] >= 0)
        baseline, _ = self.model.prior_of(None, placed, self._extra_neighbours)
        self._indexed_rows = len(keys)
        return np.hstack([keys[placed], baseline[:, None]]).astype(np.float32), self._catalog_of[placed]

    def indexed_candidates(self, index: InnerProductIndex, query: np.ndarray, recent: np.ndarray,
                           allowed: np.ndarray, k: int) -> Candidates:
        """The k best allowed items and their probabilities, as `SequentialSource` computes
        them from every item's score, from a few hundred: the index's best under the prior
        without evidence, every item the user's latest items lead to, and items newer than
        the index, each scored exactly. The softmax's denominator over the rest of the
        allowed items is estimated from a fixed sample of them (their score is the index's).
        Cold items that only the user's transitions would lift are found at their baseline."""
        keys = self.item_keys()
        found, _ = index.search(np.append(query, np.float32(1.0)), max(4 * k, 200), allowed)
        evidence = self.model.transition_evidence(recent)  # read once: what the user's items lead to
        rows = np.unique(np.concatenate([self._model_of[found], evidence[0],
                                         np.arange(self._indexed_rows, len(keys))]))
        rows = rows[(rows > 0) & (rows < len(keys))]
        rows = rows[self._catalog_of[rows] >= 0]
        rows = rows[allowed[self._catalog_of[rows]]]
        if not len(rows):
            return Candidates.empty()
        prior, _ = self.model.prior_of(recent, rows, self._extra_neighbours, evidence)
        logits = keys[rows] @ query + prior
        top = float(logits.max())
        chosen = np.lexsort((self._catalog_of[rows], -logits))[:k]
        return Candidates(self._catalog_of[rows[chosen]],
                          np.exp(logits[chosen] - top) / self._denominator(query, logits, top, rows, allowed))

    def _denominator(self, query: np.ndarray, logits: np.ndarray, top: float, rows: np.ndarray,
                     allowed: np.ndarray) -> float:
        if self._sample is None:
            rng = np.random.default_rng(0)
            placed = np.flatnonzero(self._catalog_of[: self._indexed_rows] >= 0)
            self._sample = np.sort(rng.choice(placed, min(len(placed), DENOMINATOR_SAMPLE), replace=False))
            self._sample_baseline = self.model.prior_of(None, self._sample, self._extra_neighbours)[0]
        sample = self._sample
        outside = allowed[self._catalog_of[sample]] & ~np.isin(sample, rows)
        rest = max(int(allowed.sum()) - len(rows), 0)
        exact = float(np.exp(logits - top).sum())
        if not outside.any() or rest == 0:
            return exact
        scores = self.item_keys()[sample[outside]] @ query + self._sample_baseline[outside]
        return exact + rest * float(np.exp(scores - top).mean())

    def prior_columns(self, recent: np.ndarray, model_indices: np.ndarray) -> np.ndarray:
        return self.model.prior_columns(recent, model_indices, self._extra_neighbours)

    def forget(self, user_id: str) -> None:
        self._queries.pop(user_id, None)
        self._scores.pop(user_id, None)

    def query_of(self, steps: list[SequenceStep], user: tuple[str, Hashable] | None = None
                 ) -> tuple[np.ndarray, np.ndarray] | None:
        """The user's query and latest items (`TrainedModel.query`); None when none of their
        visits is known to the model. `user`: (id, a version of their sequence, e.g. their
        state's revision): the encoder runs once per version."""
        self.align()
        kept = self._queries.get(user[0]) if user is not None else None
        if kept is not None and kept[0] == user[1]:  # type: ignore[index]
            self._queries.move_to_end(user[0])  # type: ignore[index]
            return kept[1], kept[2]
        items, features = self.inputs(steps)
        if not items:
            return None
        query, recent = self.model.query(items, features)
        if user is not None:
            self._queries[user[0]] = (user[1], query, recent)
            if len(self._queries) > QUERIES_KEPT:
                self._queries.popitem(last=False)
        return query, recent

    def catalogue_scores(self, steps: list[SequenceStep], user: tuple[str, Hashable] | None = None
                         ) -> np.ndarray | None:
        """Scores over catalogue indices (-inf where the model has no representation);
        None when none of the user's visits is known to the model (`user` as in `query_of`)."""
        found = self.query_of(steps, user)
        if found is None:
            return None
        version = (user[1], len(self.catalog), len(self._catalog_of)) if user is not None else None
        kept = self._scores.get(user[0]) if user is not None else None
        if kept is not None and kept[0] == version:
            self._scores.move_to_end(user[0])  # type: ignore[index]
            return kept[1]
        scores = self.model.scores_for(found[0], found[1], self.item_keys(), self._extra_neighbours)
        out = np.full(len(self.catalog), -np.inf)
        placed = self._catalog_of >= 0
        out[self._catalog_of[placed]] = scores[placed]
        if user is not None:
            out.flags.writeable = False  # shared by this user's requests until their next event
            self._scores[user[0]] = (version, out)
            while len(self._scores) > max(1, SCORES_KEPT_BYTES // max(out.nbytes, 1)):
                self._scores.popitem(last=False)
        return out


class SequentialSource:
    name = "sequential"

    def __init__(self, state: OnlineState, index_min_items: int = 0) -> None:
        self.state = state
        self.index = FactorIndex(index_min_items)

    def candidates(self, ctx: UserContext, k: int) -> Candidates:
        served = self.state.sequential
        if served is None or ctx.user is None:
            return Candidates.empty()
        index = self.index.get(served, served.model.n_items, served.index_rows)
        if index is not None:
            kept = served.query_of(ctx.user.recent, (ctx.user_id, ctx.user.revision))
            if kept is None:
                return Candidates.empty()
            found = served.indexed_candidates(index, kept[0], kept[1], ctx.allowed, k)
            if len(found.items) == k:
                return found
            # Fewer than k: a narrow filter the index's cells did not reach; score them all.
        logits = served.catalogue_scores(ctx.user.recent, (ctx.user_id, ctx.user.revision))
        if logits is None:
            return Candidates.empty()
        logits = np.where(ctx.allowed, logits, -np.inf)
        allowed = np.flatnonzero(np.isfinite(logits))
        if not len(allowed):
            return Candidates.empty()
        if len(allowed) > k:
            allowed = allowed[np.argpartition(-logits[allowed], k - 1)[:k]]
        order = allowed[np.lexsort((allowed, -logits[allowed]))]
        # Probabilities of the next item: positive, comparable across requests.
        top = logits[order[0]]
        denominator = np.exp(logits[np.isfinite(logits)] - top).sum()
        return Candidates(order, np.exp(logits[order] - top) / denominator)

    def explain(self, ctx: UserContext, item: int) -> str | None:
        """Name the recent visit whose model representation is closest to the item's."""
        return self.explain_many(ctx, [item])[0]

    def explain_many(self, ctx: UserContext, items: list[int]) -> list[str | None]:
        """`explain` for a whole list in one product: a request's ten items cost one call."""
        served = self.state.sequential
        if served is None or ctx.user is None or not items:
            return [None] * len(items)
        table = served.item_vectors()
        kept = ctx.extra.get(EXPLAIN_KEY)  # the latest visits, newest first: once per request
        if kept is None:
            visits = list(reversed([s for s in ctx.user.recent if s.visit][-EXPLAIN_FROM_LAST:]))
            visit_items = np.fromiter((s.item for s in visits), dtype=np.int64, count=len(visits))
            indices = served.model_indices(visit_items)
            kept = ctx.extra[EXPLAIN_KEY] = (visits, visit_items, indices > 0, table[indices])
        visits, visit_items, known, rows = kept
        wanted = np.asarray(items, dtype=np.int64)
        targets = served.model_indices(wanted)
        # (visits x items): a visit explains an item if the model knows both and they differ.
        usable = known[:, None] & (visit_items[:, None] != wanted[None, :]) & (targets > 0)[None, :]
        closeness = np.where(usable, rows @ table[targets].T, -np.inf)
        best_of = np.argmax(closeness, axis=0) if len(visits) else np.zeros(len(items), dtype=np.int64)
        explained = usable.any(axis=0)
        catalog = self.state.catalog
        reasons: list[str | None] = []
        for column, at in enumerate(best_of.tolist()):
            if not explained[column]:
                reasons.append(None)
                continue
            best = visits[at]
            title = catalog.titles[best.item] or catalog.ids[best.item]
            reasons.append(f"what tends to come next in sequences like yours, after '{title}', which you "
                           f"{action_phrase(best.type, best.value)}")
        return reasons
