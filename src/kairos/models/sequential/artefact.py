"""The trained artefact: TrainedModel, a trained SequentialRecommender in eval mode with
what it was trained on. It scores sequences (score_sequence(s), with items outside the
model from their text), serves item -> user targeting (user_queries, item_keys,
prior_columns), grows (add_items, with_transitions_from) and is saved as a directory,
`model.pt` (the state dict) and `config.json` (FORMAT_VERSION, config, fingerprint,
metrics), and loaded back.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kairos.models.sequential.config import SeqRecConfig
from kairos.models.sequential.data import StepFeatures, _encode_user, _Encoded, _pad
from kairos.models.sequential.network import (
    TEXT_DIM,
    SequentialRecommender,
    _count_transitions,
)
from kairos.threads import torch_threads

FORMAT_VERSION = 1


class TrainedModel:
    """A trained SequentialRecommender in eval mode, with what it was trained on.

    Saved as a directory: `model.pt` (the state dict) and `config.json` (config,
    data fingerprint, metrics, creation time, version id).
    """

    def __init__(self, module: SequentialRecommender, config: SeqRecConfig, event_types: list[str],
                 metrics: dict[str, Any], training_seconds: float, fingerprint: str,
                 created_at: str, version: str) -> None:
        self.module = module.eval()
        self.config = config
        self.event_types = event_types
        self.vocab = {name: i + 2 for i, name in enumerate(event_types)} if config.use_event_features else None
        self.metrics = metrics
        self.training_seconds = training_seconds
        self.fingerprint = fingerprint
        self.created_at = created_at
        self.version = version
        self._table: torch.Tensor | None = None
        self._keys: torch.Tensor | None = None  # the item table as the head scores it
        self._transitions_csr: Any = None  # scipy CSR for serving (`_log_prior`)
        self._cold: tuple[np.ndarray, np.ndarray] | None = None  # the module's cold_items, as numpy
        module.forget_neighbours()  # derived from buffers a load may have replaced
        self._smooth: np.ndarray | None = None

    @property
    def n_items(self) -> int:
        return self.module.n_items

    def item_table(self) -> torch.Tensor:
        """Computed once: scoring is one small encoder pass and one matrix product."""
        if self._table is None:
            with torch.inference_mode():
                self._table = self.module.item_table()
        return self._table

    def text_rows(self, text_vectors: np.ndarray) -> torch.Tensor:
        """Representations (len(text_vectors), width) of items the model does not know,
        from their text alone: pass them to `score_sequences(extra=...)` to score such
        items without changing the model (a served model is shared and immutable)."""
        if self.module.text_proj is None:
            raise ValueError("this model represents items by id only: it has no text path")
        with torch.inference_mode():
            return self.module.text_rows(self._text_tensor(text_vectors))

    def warm_neighbours(self, text_vectors: np.ndarray) -> np.ndarray:
        """For items the model does not know: their text neighbours among the items with
        transitions, whose prior they take (`score_sequences(extra_neighbours=...)`)."""
        with torch.inference_mode():
            return self.module.warm_neighbours(self._text_tensor(text_vectors)).numpy()

    def _text_tensor(self, text_vectors: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(text_vectors, dtype=np.float32)).reshape(-1, _text_dim(self.module))

    def score_sequences(self, sequences: Sequence[Sequence[int]],
                        features: Sequence[StepFeatures | None] | None = None,
                        extra: torch.Tensor | None = None,
                        extra_neighbours: np.ndarray | None = None) -> np.ndarray:
        """Scores (len(sequences), n_items + 1) of each sequence's next item; column 0 is -inf;
        with `extra` (from `text_rows`) and `extra_neighbours` (from `warm_neighbours`), E
        more columns for those items. Indices outside 1..n_items (items added after
        training) are skipped."""
        return self._scores(sequences, features, extra, extra_neighbours)[0]

    def _scores(self, sequences: Sequence[Sequence[int]], features: Sequence[StepFeatures | None] | None,
                extra: torch.Tensor | None, extra_neighbours: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Full scores, the queries they were computed from (before the transition prior)
        and the sequences as the model read them."""
        users = []
        for i, sequence in enumerate(sequences):
            encoded = _encode_user(sequence, features[i] if features else None, self.vocab)
            keep = (encoded.items >= 1) & (encoded.items <= self.n_items)
            users.append(_Encoded(encoded.items[keep],
                                  None if encoded.types is None else encoded.types[keep],
                                  None if encoded.gaps is None else encoded.gaps[keep]))
        length = max(1, min(self.config.max_len, max((len(u.items) for u in users), default=1)))
        items = torch.from_numpy(_pad([u.items for u in users], length))
        types = torch.from_numpy(_pad([u.types for u in users], length)) if self.vocab is not None else None
        gaps = torch.from_numpy(_pad([u.gaps for u in users], length)) if self.vocab is not None else None
        module = self.module
        with torch_threads(1), torch.inference_mode():
            table = self.item_table()
            if self._keys is None:
                self._keys = module.head(table[:1], table)[1]  # the table as scores multiply it
            last = module.last(items, table, types, gaps)
            query = module.head(last, table[:1])[0]
            scores = query @ self._keys.T
            if extra is not None:
                scores = torch.cat([scores, query @ module.head(last, extra)[1].T], 1)
        scores = scores.numpy()
        if self.config.transition_window:
            scores += float(module.trans_scale) * self._log_prior([u.items for u in users], scores.shape[1],
                                                                  extra_neighbours)
        scores[:, 0] = -np.inf
        return scores, query.numpy(), [u.items for u in users]

    # -- one user's request, in two halves: the query once per event, scores per request --

    def query(self, sequence: Sequence[int], features: StepFeatures | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The network's query for one sequence (its scores are `item_keys() @ query`) and
        its latest items, latest first (`transition_lags` of them, for the prior): all a
        request needs of the sequence, so it can be kept until the user's next event."""
        encoded = _encode_user(sequence, features, self.vocab)
        keep = (encoded.items >= 1) & (encoded.items <= self.n_items)
        user = _Encoded(encoded.items[keep], None if encoded.types is None else encoded.types[keep],
                        None if encoded.gaps is None else encoded.gaps[keep])
        length = max(1, min(self.config.max_len, len(user.items)))
        items = torch.from_numpy(_pad([user.items], length))
        types = torch.from_numpy(_pad([user.types], length)) if self.vocab is not None else None
        gaps = torch.from_numpy(_pad([user.gaps], length)) if self.vocab is not None else None
        with torch_threads(1), torch.inference_mode():
            table = self.item_table()
            query = self.module.head(self.module.last(items, table, types, gaps), table[:1])[0]
        return query.numpy()[0].copy(), user.items[-self.config.transition_lags:][::-1].copy()

    def scores_for(self, query: np.ndarray, recent: np.ndarray, keys: np.ndarray,
                   extra_neighbours: np.ndarray | None = None) -> np.ndarray:
        """What `score_sequence` gives, from `query` (recent items as `query` returns them)
        and `item_keys(extra)`: one matrix-vector product and the prior's few sparse rows."""
        scores = keys @ query
        if self.config.transition_window:
            scores += float(self.module.trans_scale) * self._log_prior_row(recent, len(scores), extra_neighbours)
        scores[0] = -np.inf
        return scores

    def _log_prior_row(self, recent: np.ndarray, width: int, extra_neighbours: np.ndarray | None) -> np.ndarray:
        """`_log_prior` for one user, summing the transition rows of their latest items
        directly (no sparse matrices built per request)."""
        module, config = self.module, self.config
        n = module.n_items + 1
        if self._transitions_csr is None:
            self._log_prior([np.array([1])], n)  # builds the CSR and the smoothing once
        csr = self._transitions_csr
        decay = config.transition_decay ** np.arange(len(recent))
        starts, ends = csr.indptr[recent], csr.indptr[recent + 1]
        columns = np.concatenate([csr.indices[a:b] for a, b in zip(starts, ends, strict=True)] or [np.zeros(0, int)])
        weights = np.concatenate([csr.data[a:b] * w for a, b, w in zip(starts, ends, decay, strict=True)]
                                 or [np.zeros(0)])
        prior = np.empty((1, width), dtype=np.float32)
        prior[0, :n] = np.log(np.bincount(columns, weights, minlength=n) + self._smooth)
        return self._price_cold(prior, extra_neighbours)[0]

    # -- item -> user targeting (push): one item scored for many users --

    def user_queries(self, sequences: Sequence[Sequence[int]],
                     features: Sequence[StepFeatures | None] | None = None,
                     extra: torch.Tensor | None = None, extra_neighbours: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What scoring one item for many users needs, per sequence: its query (the network's
        score of item j is query @ item_keys()[j]), the log-sum-exp of its full scores (the
        softmax normaliser over every item, extra ones included) and its latest items, latest
        first (`transition_lags` columns, 0 = none) for `prior_columns`. Then
        log P(j | sequence) = query @ key_j + prior_columns(...)_j - lse, for any j, without
        scoring the whole catalogue per user again."""
        scores, query, read = self._scores(sequences, features, extra, extra_neighbours)
        top = scores[:, 1:].max(1, keepdims=True)
        lse = (np.log(np.exp(scores[:, 1:] - top).sum(1)) + top[:, 0]).astype(np.float64)
        lags = self.config.transition_lags
        recent = np.zeros((len(read), lags), dtype=np.int64)
        for row, items in enumerate(read):
            latest = items[-lags:][::-1]
            recent[row, : len(latest)] = latest
        return query.astype(np.float32), lse, recent

    def item_keys(self, extra: torch.Tensor | None = None) -> np.ndarray:
        """(n_items + 1 [+ E], d) the item side of the network's scores (see `user_queries`)."""
        with torch.inference_mode():
            table = self.item_table()
            keys = self.module.head(table[:1], table)[1]
            if extra is not None:
                keys = torch.cat([keys, self.module.head(table[:1], extra)[1]])
        return keys.numpy().astype(np.float32)

    def _prior_tables(self) -> tuple[Any, np.ndarray, np.ndarray]:
        """The transition matrix (CSR), and the cold items with their warm neighbours:
        built once, for `prior_of` and `prior_columns`."""
        if self._transitions_csr is None:
            self._log_prior([np.array([1])], self.module.n_items + 1)  # builds the CSR and the smoothing
        if self._cold is None:
            cold, neighbours = self.module.cold_items()
            self._cold = (cold.numpy(), neighbours.numpy())
        return self._transitions_csr, *self._cold

    def transition_evidence(self, recent: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The columns a user's latest items (`recent` as `query` returns them; None: none)
        lead to (model indices, ascending) and their decayed transition counts: a few rows
        of the transition matrix, never a catalogue-long one."""
        led = np.empty(0, dtype=np.int64)
        evidence = np.empty(0, dtype=np.float64)
        if recent is None or not len(recent) or not self.config.transition_window:
            return led, evidence
        csr = self._prior_tables()[0]
        recent = recent[recent > 0]
        decay = self.config.transition_decay ** np.arange(len(recent))
        starts, ends = csr.indptr[recent], csr.indptr[recent + 1]
        found = [csr.indices[a:b] for a, b in zip(starts, ends, strict=True)]
        if found:
            led, where = np.unique(np.concatenate(found), return_inverse=True)
            weights = np.concatenate([csr.data[a:b] * w for a, b, w in zip(starts, ends, decay, strict=True)])
            evidence = np.bincount(where, weights, minlength=len(led))
        return led, evidence

    def prior_of(self, recent: np.ndarray | None, columns: np.ndarray,
                 extra_neighbours: np.ndarray | None = None,
                 evidence: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One user's transition prior (what `scores_for` adds) of `columns` only, and the
        columns their latest items lead to (`transition_evidence(recent)`, or `evidence`
        when already read): `prior_of(None, ...)` is every column's prior without evidence."""
        module, config = self.module, self.config
        columns = np.asarray(columns, dtype=np.int64)
        if not config.transition_window:
            return np.zeros(len(columns), dtype=np.float32), np.empty(0, dtype=np.int64)
        n = module.n_items + 1
        _, cold, cold_neighbours = self._prior_tables()
        led, counts = evidence if evidence is not None else self.transition_evidence(recent)

        def log_prior(of: np.ndarray) -> np.ndarray:
            at = np.minimum(np.searchsorted(led, of), max(len(led) - 1, 0))
            seen = np.zeros(len(of)) if not len(led) else np.where(led[at] == of, counts[at], 0.0)
            return np.log(seen + self._smooth[of])

        floor = math.log(0.01 / module.n_items)
        out = np.full(len(columns), floor)
        warm = columns < n
        out[warm] = log_prior(columns[warm])
        if len(cold):
            row = np.searchsorted(cold, columns)
            is_cold = warm & (row < len(cold)) & (cold[np.minimum(row, len(cold) - 1)] == columns)
            if is_cold.any():
                picked = cold_neighbours[row[is_cold]]
                out[is_cold] = log_prior(picked.ravel()).reshape(picked.shape).max(-1) if picked.shape[1] else floor
        extra = ~warm
        if extra.any() and config.cold_prior != "floor" and extra_neighbours is not None \
                and extra_neighbours.shape[1]:
            picked = extra_neighbours[columns[extra] - n]
            out[extra] = log_prior(picked.ravel()).reshape(picked.shape).max(-1)
        return (float(module.trans_scale) * out).astype(np.float32), led

    def prior_columns(self, recent: np.ndarray, columns: np.ndarray,
                      extra_neighbours: np.ndarray | None = None) -> np.ndarray:
        """(len(recent), len(columns)) the weighted transition prior (what `score_sequences`
        adds to the network's scores) of the items `columns` for users whose latest items are
        the rows of `recent` (from `user_queries`); columns past n_items are extra items,
        priced by `extra_neighbours` as in scoring. Zeros without a transition prior."""
        module, config = self.module, self.config
        if not config.transition_window:
            return np.zeros((len(recent), len(columns)), dtype=np.float32)
        from scipy import sparse

        n = module.n_items + 1
        _, cold, cold_neighbours = self._prior_tables()
        cold_of = {int(c): cold_neighbours[i] for i, c in enumerate(cold.tolist())}
        sources: list[np.ndarray] = []  # per requested column: the columns whose prior it takes
        for column in np.asarray(columns).tolist():
            if column >= n:
                neighbours = (extra_neighbours[column - n] if extra_neighbours is not None
                              and config.cold_prior != "floor" else np.zeros(0, dtype=np.int64))
                sources.append(np.asarray(neighbours, dtype=np.int64))
            elif column in cold_of:
                sources.append(np.asarray(cold_of[column], dtype=np.int64))
            else:
                sources.append(np.array([column], dtype=np.int64))
        needed = np.unique(np.concatenate([*sources, np.zeros(0, dtype=np.int64)]))
        decay = (config.transition_decay ** np.arange(recent.shape[1])).astype(np.float32)
        rows, lags = np.nonzero(recent > 0)
        mixture = sparse.csr_matrix((decay[lags], (rows, recent[rows, lags])), shape=(len(recent), n))
        evidence = (mixture @ self._transitions_csr[:, needed]).toarray() if len(needed) else \
            np.zeros((len(recent), 0))
        log_prior = np.log(evidence + self._smooth[needed][None, :])
        floor = math.log(0.01 / module.n_items)
        out = np.full((len(recent), len(sources)), floor, dtype=np.float32)
        for j, source in enumerate(sources):
            if len(source):
                out[:, j] = log_prior[:, np.searchsorted(needed, source)].max(1)
        return float(module.trans_scale) * out

    def _log_prior(self, sequences: Sequence[np.ndarray], width: int,
                   extra_neighbours: np.ndarray | None = None) -> np.ndarray:
        """`SequentialRecommender.transition_prior` for serving, in scipy: the rows of the
        user's latest items, summed with decaying weights (a few sparse rows, not a
        matrix product over the catalogue); columns past n_items (extra items) get the
        prior of an item without transitions."""
        from scipy import sparse

        module, config = self.module, self.config
        n = module.n_items + 1
        if self._transitions_csr is None:
            index, value = module.trans_index.numpy(), module.trans_value.numpy()
            self._transitions_csr = sparse.csr_matrix((value, (index[0], index[1])), shape=(n, n))
            self._smooth = (config.transition_mix * module.trans_pop.numpy() + 0.01 / module.n_items)
        rows, cols, weights = [], [], []
        decay = config.transition_decay ** np.arange(config.transition_lags)
        for row, items in enumerate(sequences):
            recent = np.asarray(items[-config.transition_lags:])[::-1]
            rows.append(np.full(len(recent), row))
            cols.append(recent)
            weights.append(decay[: len(recent)])
        mixture = sparse.csr_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
                                    shape=(len(sequences), n))
        prior = np.empty((len(sequences), width), dtype=np.float32)
        prior[:, :n] = np.log((mixture @ self._transitions_csr).toarray() + self._smooth[None, :])
        return self._price_cold(prior, extra_neighbours)

    def _price_cold(self, prior: np.ndarray, extra_neighbours: np.ndarray | None) -> np.ndarray:
        """Items without transitions (cold, and extra columns past n_items) take the best
        prior of their text neighbours, or the floor (in place; returns `prior`)."""
        module, config = self.module, self.config
        n = module.n_items + 1
        floor = math.log(0.01 / module.n_items)
        if self._cold is None:
            cold, neighbours = module.cold_items()
            self._cold = (cold.numpy(), neighbours.numpy())
        cold, neighbours = self._cold
        if len(cold):
            prior[:, cold] = prior[:, neighbours].max(-1) if neighbours.shape[1] else floor
        if prior.shape[1] > n:
            if config.cold_prior == "floor" or extra_neighbours is None or not extra_neighbours.shape[1]:
                prior[:, n:] = floor
            else:
                prior[:, n:] = prior[:, :n][:, extra_neighbours].max(-1)
        return prior

    def score_sequence(self, item_indices: Sequence[int], features: StepFeatures | None = None,
                       extra: torch.Tensor | None = None, extra_neighbours: np.ndarray | None = None) -> np.ndarray:
        """Scores (n_items + 1 [+ E],) of the next item after this sequence (oldest first)."""
        return self.score_sequences([item_indices], [features] if features is not None else None, extra,
                                    extra_neighbours)[0]

    def add_items(self, text_vectors: np.ndarray) -> np.ndarray:
        """Append items created after training, represented by their text alone; returns
        their indices. Without the text path they score 0 (no representation)."""
        vectors = torch.from_numpy(np.ascontiguousarray(text_vectors, dtype=np.float32)).reshape(-1, _text_dim(self.module))
        module, count = self.module, len(vectors)
        with torch.no_grad():
            if module.item_ids is not None:
                grown = nn.Embedding(module.n_items + 1 + count, module.config.width, padding_idx=0)
                grown.weight[: module.n_items + 1] = module.item_ids.weight
                grown.weight[module.n_items + 1 :] = 0.0
                module.item_ids = grown
            if module.text_proj is not None:
                module.text = torch.cat([module.text, vectors])
            module.id_mask = torch.cat([module.id_mask, torch.zeros(count, 1)])
            if module.config.transition_window:
                module.trans_pop = torch.cat([module.trans_pop, torch.zeros(count)])  # no transitions yet
        first = module.n_items + 1
        module.n_items += count
        self._table = self._keys = self._transitions_csr = self._cold = None
        module.forget_neighbours()
        return np.arange(first, first + count)

    def save(self, path: Path) -> Path:
        """Write the artefact directory (replacing one already there)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.mkdir(parents=True)
        try:
            torch.save(self.module.state_dict(), tmp / "model.pt")
            (tmp / "config.json").write_text(json.dumps(self.describe(), indent=2))
            if path.exists():
                old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old)
            else:
                os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return path

    def with_transitions_from(self, sequences: Sequence[np.ndarray]) -> TrainedModel:
        """A copy whose transition prior counts only these sequences (model indices, oldest
        first). The artefact's prior also counts each user's last visit, which the network
        never trained on; a view of the log without those visits (the ranker's training,
        ranking/training.py) must not find them in the prior either."""
        if not self.config.transition_window:
            return self
        module = copy.deepcopy(self.module)
        _count_transitions(module, [np.asarray(s, dtype=np.int64) for s in sequences if len(s)])
        return TrainedModel(module, self.config, self.event_types, self.metrics, self.training_seconds,
                            self.fingerprint, self.created_at, self.version)

    def describe(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION, "version": self.version, "created_at": self.created_at,
            "config": asdict(self.config), "n_items": self.n_items, "text_dim": _text_dim(self.module),
            "event_types": self.event_types, "data_fingerprint": self.fingerprint,
            "metrics": self.metrics, "training_seconds": self.training_seconds, "torch": torch.__version__,
        }

    @classmethod
    def load(cls, path: Path) -> TrainedModel:
        path = Path(path)
        meta = json.loads((path / "config.json").read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: artefact format {meta.get('format')!r}, expected {FORMAT_VERSION}")
        config = SeqRecConfig(**meta["config"])
        module = SequentialRecommender(config, meta["n_items"], len(meta["event_types"]), meta["text_dim"])
        state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
        if config.transition_window:  # data-sized buffers
            module.set_transitions(state["trans_index"], state["trans_value"], state["trans_pop"])
        module.load_state_dict(state)
        return cls(module, config, list(meta["event_types"]), meta["metrics"], meta["training_seconds"],
                   meta["data_fingerprint"], meta["created_at"], meta["version"])


def _text_dim(module: SequentialRecommender) -> int:
    return module.text.shape[1] if module.text_proj is not None else TEXT_DIM
