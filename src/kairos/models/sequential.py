"""The behaviour model: a causal transformer over each user's item sequence (the
SASRec / HSTU family), text-aware so that an item nobody has interacted with yet
still has a representation, small enough to train on a laptop CPU in minutes.

Conventions: item indices run 1..n_items and 0 is padding. Scores cover indices
0..n_items with index 0 at -inf, so a score's position is its item's index.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kairos.progress import progress as progress_bar
from kairos.threads import torch_threads

FORMAT_VERSION = 1
TEXT_DIM = 384
LOSSES = ("softmax", "sampled_softmax", "bce")
LR_SCHEDULES = ("constant", "cosine")
COLD_PRIORS = ("neighbours", "floor")
# A transition matrix with at most this many cells is used dense (fast); above, sparse.
DENSE_TRANSITIONS = 1 << 24  # entries: 64 MB of float32 (about 4,000 items); sparse CSR above
# Weights of the transition prior tried on the validation set (0: the network alone).
TRANSITION_SCALES = (0.0, *(2.0 ** (k / 2) for k in range(-4, 11)))
# Time gaps: 0 padding, 1 "no previous step", then 2 + floor(log2(1 + seconds)), capped.
GAP_BUCKETS = 34
UNKNOWN_TYPE = 1  # event-type ids: 0 padding, 1 a type not seen in training


@dataclass
class SeqRecConfig:
    """Architecture, objective and training schedule. Saved with the model."""

    depth: int = 2
    width: int = 64
    heads: int = 2
    dropout: float = 0.2
    max_len: int = 200  # 50 for short-history (Amazon-like) data
    ffn_mult: int = 4
    loss: str = "softmax"  # "softmax" (full) | "sampled_softmax" | "bce" (SASRec's)
    negatives: int = 256  # uniform negatives shared across a batch (sampled_softmax)
    in_batch_negatives: bool = True  # sampled_softmax: as many again from the batch's positives, logQ-corrected
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    epochs: int = 200
    patience: int = 10  # epochs without a better validation NDCG@10 before stopping
    seed: int = 0
    use_ids: bool = True
    use_text: bool = True
    use_event_features: bool = False
    whiten_text: bool = True
    # Each position learns the next `horizon` items, not only the next one (PinnerFormer's
    # dense all-action loss): where order within a session is noise, the set carries signal.
    horizon: int = 1
    temperature: float | None = None  # set: cosine scores over this temperature; None: dot product
    # A history's items are never candidates: not in validation ranking, not among the
    # training negatives (for data without repeat consumption, ranked with history masked).
    exclude_seen: bool = False
    valid_users: int | None = 20_000  # validate on a seeded sample of at most this many users
    # False: train on every given item for exactly `epochs` epochs, without validation
    # (a refit, with the epoch count that an earlier holdout run chose).
    holdout: bool = True
    # With a holdout, the network trains on each sequence without its last `holdout_tail`
    # items (validation still ranks the last): the ranker learns from those visits, which
    # the network must never have learned (ranking/training.py). More than 1 only where
    # histories are long, so the few items left out cost the network nothing.
    holdout_tail: int = 1
    threads: int = 1  # intra-op threads; 2 on a shared 2-core machine can run 10x slower
    max_seconds: float | None = None  # training time budget; reaching it breaks determinism
    # Learning-rate schedule: linear warm-up over this many optimiser steps, then constant
    # ("constant") or a cosine decay to 0 at `epochs` ("cosine").
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    label_smoothing: float = 0.0  # full softmax only
    # Whether items absent from the training sequences (no behaviour yet: new arrivals,
    # held-out items) serve as negatives. Only ever negatives, they teach the model to
    # bury items like them, text and all (see docs/benchmarks.md, cold items).
    untrained_negatives: bool = False
    # The transition prior (first-order, FPMC-like, nonparametric): the network's logits get
    # scale * log(sum_r decay^r P(next | r-th latest item) + mix * popularity + 0.01 / n),
    # P counted on the training sequences (a pair of items up to `transition_window` steps
    # apart counts 1 forward and `transition_backward` backward) and stored in the artefact.
    # 0 turns it off. The network trains alone (trained with the prior, it memorises the
    # training targets and the prior looks less useful than it is on unseen steps); the
    # scale is chosen each epoch on the validation NDCG@10 (None), or given (a refit).
    transition_window: int = 0
    transition_backward: float = 0.5
    transition_lags: int = 10
    transition_decay: float = 0.8
    transition_mix: float = 0.1
    transition_scale: float | None = None
    # The prior of an item without training transitions (new, or no behaviour yet):
    # "neighbours", the highest prior among the `cold_neighbours` items with transitions
    # whose text is closest (what follows the user's items is likely followed by items
    # like it too); "floor", no evidence and no popularity, which buries it whatever its
    # text says.
    cold_prior: str = "neighbours"
    cold_neighbours: int = 5

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, not {self.loss!r}")
        if not (self.use_ids or self.use_text):
            raise ValueError("an item needs ids or text (use_ids or use_text)")
        if self.width % self.heads:
            raise ValueError("width must be a multiple of heads")
        if min(self.max_len, self.batch_size, self.epochs, self.patience, self.horizon) < 1:
            raise ValueError("max_len, batch_size, epochs, patience and horizon must be >= 1")
        if self.cold_prior not in COLD_PRIORS:
            raise ValueError(f"cold_prior must be one of {COLD_PRIORS}, not {self.cold_prior!r}")
        if self.cold_neighbours < 1:
            raise ValueError("cold_neighbours must be >= 1")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, not {self.lr_schedule!r}")
        if self.transition_window < 0 or self.transition_lags < 1:
            raise ValueError("transition_window must be >= 0 and transition_lags >= 1")
        if self.holdout_tail < 1:
            raise ValueError("holdout_tail must be >= 1")
        if self.transition_window and not self.holdout and self.transition_scale is None:
            raise ValueError("without a holdout, the transition prior needs its transition_scale")


# Named settings, chosen on the validation metric of benchmarks/sequential.py (see
# benchmarks/results/sequential.json): "long" for MovieLens-like data (long histories, no
# repeat consumption, history masked at ranking), "short" for Amazon-like data.
# Both add the transition prior to a network trained alone. Their epoch counts are what
# fitted in 5 minutes on one CPU thread of the benchmark's machine (the runs that chose
# them stopped on a 290 s / 200 s budget at epoch 44 / 18, validation still improving);
# an epoch count keeps training deterministic, and `max_seconds` is only a safety net for
# a much slower or busier machine (reaching it breaks determinism).
SEQREC_PRESETS: dict[str, dict[str, Any]] = {
    # ml-latest-small: many small steps (batch 16) of in-batch + uniform sampled softmax
    # (about 6 s an epoch against 11 for the full softmax over 3,650 items), strong dropout.
    "long": {"max_len": 200, "exclude_seen": True, "loss": "sampled_softmax", "batch_size": 16, "dropout": 0.5,
             "temperature": 0.07, "epochs": 44, "patience": 25, "max_seconds": 900.0,
             "transition_window": 5, "transition_lags": 10, "transition_decay": 0.8, "holdout_tail": 3},
    # Amazon Scientific: short histories; items by their text alone (validation: text 0.0821,
    # ids and text 0.0800, ids 0.0771 with the prior), full softmax, wider items, few epochs.
    "short": {"max_len": 50, "use_ids": False, "loss": "softmax", "batch_size": 256, "width": 128, "dropout": 0.3,
              "temperature": 0.07, "epochs": 18, "patience": 5, "max_seconds": 900.0,
              "transition_window": 5, "transition_lags": 5, "transition_decay": 0.5},
}


def preset_config(name: str, **overrides: Any) -> SeqRecConfig:
    """The named preset's SeqRecConfig, with `overrides` (SeqRecConfig fields) on top."""
    if name not in SEQREC_PRESETS:
        raise ValueError(f"unknown preset {name!r}: one of {', '.join(SEQREC_PRESETS)}")
    return SeqRecConfig(**{**SEQREC_PRESETS[name], **overrides})


@dataclass(frozen=True)
class StepFeatures:
    """Per-step side information, parallel to a user's item list."""

    types: Sequence[str]  # event tokens, see `event_token`
    timestamps: Sequence[float]


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    epochs: int
    loss: float
    valid_ndcg10: float
    valid_hr10: float
    best_epoch: int
    seconds: float  # this epoch, validation included
    elapsed: float
    eta_seconds: float  # left if validation stops improving now (early stopping), within any budget


def event_token(event_type: str, value: float | None) -> str:
    """What the model sees of an event: its type, and a rating's value to the half star
    (a 1-star rating says something quite different from a 5-star one)."""
    if event_type == "rating" and value is not None:
        return f"rating:{round(value * 2) / 2:g}"
    return event_type


def gap_buckets(timestamps: Sequence[float]) -> np.ndarray:
    """Log-scale buckets of the time since the previous step (1 for the first step)."""
    ts = np.asarray(timestamps, dtype=np.float64)
    out = np.ones(len(ts), dtype=np.int64)
    if len(ts) > 1:
        gaps = np.maximum(np.diff(ts), 0.0)
        out[1:] = 2 + np.minimum(np.floor(np.log2(1.0 + gaps)), GAP_BUCKETS - 3).astype(np.int64)
    return out


# -- the network ---------------------------------------------------------------------------


class _Block(nn.Module):
    """Pre-LN transformer block. Sequences are right-padded, so plain causal attention
    never lets a real step see padding, and SDPA takes its fused path (no mask tensor,
    no dropout on the attention weights), several times faster on CPU than masked attention."""

    def __init__(self, width: int, heads: int, dropout: float, ffn_mult: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, ffn_mult * width), nn.GELU(),
                                 nn.Linear(ffn_mult * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.drop(self.proj(attended.transpose(1, 2).reshape(b, length, width)))
        return x + self.drop(self.ffn(self.norm2(x)))


class SequentialRecommender(nn.Module):
    """Causal transformer over right-padded item sequences.

    An item is its id embedding plus a learned projection of its frozen text
    embedding; items with no training interaction keep only the text part
    (`id_mask`), so a new item is represented from its text alone. The same item
    table embeds the inputs and scores the output (tied, as in SASRec).
    """

    def __init__(self, config: SeqRecConfig, n_items: int, n_event_types: int = 0,
                 text_dim: int = TEXT_DIM) -> None:
        super().__init__()
        self.config = config
        self.n_items = n_items
        d = config.width
        self.item_ids = nn.Embedding(n_items + 1, d, padding_idx=0) if config.use_ids else None
        if config.use_text:
            self.register_buffer("text", torch.zeros(n_items + 1, text_dim))
            # Fixed whitening of the text space (identity until `set_text`): sentence
            # embeddings are anisotropic, and a whitened input trains the projection faster.
            self.register_buffer("text_mean", torch.zeros(text_dim))
            self.register_buffer("text_whiten", torch.eye(text_dim))
            self.text_proj: nn.Linear | None = nn.Linear(text_dim, d, bias=False)
        else:
            self.text_proj = None
        # 1 for items trained by id; 0 (text only) for items never seen in training.
        self.register_buffer("id_mask", torch.ones(n_items + 1, 1))
        self.positions = nn.Embedding(config.max_len + 1, d, padding_idx=0)
        if config.use_event_features:
            self.event_types: nn.Embedding | None = nn.Embedding(n_event_types + 2, d, padding_idx=0)
            self.gaps: nn.Embedding | None = nn.Embedding(GAP_BUCKETS, d, padding_idx=0)
        else:
            self.event_types = self.gaps = None
        self.input_drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(_Block(d, config.heads, config.dropout, config.ffn_mult)
                                    for _ in range(config.depth))
        self.final_norm = nn.LayerNorm(d)
        self._init_weights()
        if config.transition_window:
            # P(next = j | item i) as a sparse (n_items + 1)^2 matrix (row 0 empty), and the
            # items' share of training steps; sized by `set_transitions` (or when loading).
            self.register_buffer("trans_index", torch.zeros(2, 0, dtype=torch.long))
            self.register_buffer("trans_value", torch.zeros(0))
            self.register_buffer("trans_pop", torch.zeros(n_items + 1))
            self.register_buffer("trans_scale", torch.tensor(config.transition_scale or 0.0))
        self._cold: tuple[torch.Tensor, torch.Tensor] | None = None  # see cold_items
        self._warm: torch.Tensor | None = None  # see warm_neighbours

    def forget_neighbours(self) -> None:
        """Drop what cold_items and warm_neighbours derived from the text and transitions
        (after either changes: training, loading, items appended)."""
        self._cold = self._warm = None

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def item_table(self) -> torch.Tensor:
        """(n_items + 1, width) representations of every item; row 0 (padding) is zero."""
        table = torch.zeros(self.n_items + 1, self.config.width, device=self.id_mask.device)
        if self.item_ids is not None:
            table = table + self.item_ids.weight * self.id_mask
        if self.text_proj is not None:
            table = table + self.text_rows(self.text)
        return table

    def text_rows(self, vectors: torch.Tensor) -> torch.Tensor:
        """The text part of item representations (zero rows stay zero): all an item the
        model never saw in training has."""
        assert self.text_proj is not None
        weight = self.text_whiten @ self.text_proj.weight.T  # whitening folded into the projection
        has_text = (vectors != 0).any(1, keepdim=True)
        return (vectors @ weight - self.text_mean @ weight) * has_text

    def set_text(self, vectors: torch.Tensor, whiten: bool) -> None:
        """Load the frozen text vectors (row 0 and rows without text are zero) and fit
        the whitening on the rows that have text (ZCA, scaled to unit expected norm)."""
        self.forget_neighbours()
        with torch.no_grad():
            self.text.copy_(vectors)
            rows = vectors[(vectors != 0).any(1)].double()
            if not whiten or len(rows) < 2:
                return
            mean = rows.mean(0)
            values, vecs = torch.linalg.eigh(torch.cov((rows - mean).T))
            values = values.clamp(min=0) + 1e-2 * values.max()  # shrink: tiny directions stay tame
            whiten = vecs @ torch.diag(values.rsqrt()) @ vecs.T / math.sqrt(rows.shape[1])
            self.text_mean.copy_(mean.float())
            self.text_whiten.copy_(whiten.float())

    def encode(self, items: torch.Tensor, table: torch.Tensor, types: torch.Tensor | None = None,
               gaps: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, L, width) of right-padded (B, L) sequences."""
        valid = items != 0
        positions = torch.arange(1, items.shape[1] + 1, device=items.device) * valid  # 0 on padding
        x = table[items] + self.positions(positions)
        if self.event_types is not None and types is not None:
            x = x + self.event_types(types)
        if self.gaps is not None and gaps is not None:
            x = x + self.gaps(gaps)
        x = self.input_drop(x)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)

    def last(self, items: torch.Tensor, table: torch.Tensor, types: torch.Tensor | None = None,
             gaps: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden state (B, width) after each sequence's last real step."""
        hidden = self.encode(items, table, types, gaps)
        last = ((items != 0).sum(1) - 1).clamp(min=0)  # an empty sequence reads its padding step
        return hidden[torch.arange(len(items)), last]

    def forward(self, items: torch.Tensor, types: torch.Tensor | None = None,
                gaps: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (B, n_items + 1) of the next item after each sequence."""
        return self.scores(items, self.item_table(), types, gaps)

    def scores(self, items: torch.Tensor, table: torch.Tensor, types: torch.Tensor | None = None,
               gaps: torch.Tensor | None = None, transitions: torch.Tensor | None = None,
               extra: torch.Tensor | None = None, extra_neighbours: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (B, n_items + 1) of the next item after each right-padded sequence, the
        transition prior included (`transitions`: `transition_matrix()`, if already built).
        `extra` (E, width): representations of items outside the model (`text_rows`),
        scored as columns n_items + 1 ... with the prior of an item without transitions
        (`extra_neighbours`: their `warm_neighbours`)."""
        last = self.last(items, table, types, gaps)
        hidden, out = self.head(last, table)
        scores = hidden @ out.T
        if extra is not None:
            scores = torch.cat([scores, hidden @ self.head(last, extra)[1].T], 1)
        if self.config.transition_window:
            prior = self.transition_prior(items, transitions)
            if extra is not None:
                prior = torch.cat([prior, self.cold_prior(prior, extra_neighbours, len(extra))], 1)
            scores = scores + self.trans_scale * prior
        scores[:, 0] = -torch.inf
        return scores

    # -- the transition prior --

    def set_transitions(self, index: torch.Tensor, value: torch.Tensor, pop: torch.Tensor) -> None:
        self.forget_neighbours()
        self.trans_index = index.to(torch.long)
        self.trans_value = value.to(torch.float32)
        self.trans_pop = pop.to(torch.float32)

    def transition_matrix(self) -> torch.Tensor:
        """(n_items + 1)^2 P(next | item): dense where small enough, else sparse CSR."""
        return _transition_tensor(self.trans_index, self.trans_value, (self.n_items + 1, self.n_items + 1))

    def transition_prior(self, items: torch.Tensor, matrix: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n_items + 1) log prior of the next item after each right-padded sequence,
        from its latest `transition_lags` items (`matrix`: `transition_matrix()`)."""
        matrix = self.transition_matrix() if matrix is None else matrix
        count, lags = len(items), self.config.transition_lags
        at = (items != 0).sum(1, keepdim=True) - 1 - torch.arange(lags)[None, :]  # latest first
        recent = items.gather(1, at.clamp(min=0)) * (at >= 0)
        keep = recent > 0
        weights = self.config.transition_decay ** torch.arange(lags, dtype=torch.float32)
        positions = torch.arange(count)[:, None].expand(count, lags)
        mixture = torch.sparse_coo_tensor(torch.stack([positions[keep], recent[keep]]),
                                          weights.expand(count, lags)[keep], (count, matrix.shape[0]),
                                          check_invariants=False).coalesce()
        if matrix.layout == torch.strided:
            evidence = torch.sparse.mm(mixture, matrix)
        else:
            evidence = (mixture.to_sparse_csr() @ matrix).to_dense()
        smooth = self.config.transition_mix * self.trans_pop + 0.01 / self.n_items
        prior = torch.log(evidence + smooth[None, :])
        cold, neighbours = self.cold_items()
        if len(cold):
            prior[:, cold] = self.cold_prior(prior, neighbours, len(cold))
        return prior

    def cold_prior(self, prior: torch.Tensor, neighbours: torch.Tensor | None, count: int) -> torch.Tensor:
        """(B, count) the log prior of `count` items without transitions, from each row's
        prior over their text neighbours (or the floor)."""
        if self.config.cold_prior == "floor" or neighbours is None or not neighbours.shape[1]:
            return torch.full((len(prior), count), math.log(0.01 / self.n_items))
        return prior[:, neighbours].amax(-1)

    def cold_items(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The items with text but no training transitions, and their `warm_neighbours`
        (computed once per set of transitions)."""
        if self._cold is None:
            empty = torch.zeros(0, dtype=torch.long)
            self._cold = (empty, empty[:, None])
            if self.config.cold_prior == "neighbours" and self.text_proj is not None:
                has_text = (self.text != 0).any(1)
                has_text[0] = False
                cold = torch.nonzero(has_text & (self.trans_pop == 0)).flatten()
                if len(cold):
                    self._cold = (cold, self.warm_neighbours(self.text[cold]))
        return self._cold

    def warm_neighbours(self, vectors: torch.Tensor) -> torch.Tensor:
        """(len(vectors), up to cold_neighbours) the items with transitions and text whose
        text vectors have the highest inner product with each of `vectors`."""
        if self._warm is None:
            warm = torch.nonzero((self.trans_pop > 0) & (self.text != 0).any(1)).flatten()
            self._warm = warm[warm > 0]
        warm = self._warm
        count = min(self.config.cold_neighbours, len(warm))
        if not count:
            return torch.zeros(len(vectors), 0, dtype=torch.long)
        return warm[(vectors @ self.text[warm].T).topk(count, dim=1).indices]

    def head(self, hidden: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What scores multiply: as is (dot product), or unit vectors over a temperature
        (cosine, as the text-based recommenders: popular items cannot win by norm)."""
        if self.config.temperature is None:
            return hidden, table
        return F.normalize(hidden, dim=-1) / self.config.temperature, F.normalize(table, dim=-1)


# -- data ----------------------------------------------------------------------------------


@dataclass
class _Windows:
    """Right-padded training windows (W, max_len): inputs, targets (W, max_len, horizon), features."""

    items: np.ndarray
    targets: np.ndarray
    types: np.ndarray | None
    gaps: np.ndarray | None
    lengths: np.ndarray


@dataclass
class _Validation:
    items: np.ndarray  # (U, max_len) right-padded histories
    types: np.ndarray | None
    gaps: np.ndarray | None
    targets: np.ndarray  # (U,)
    seen: np.ndarray | None  # (U, S) padded with 0: items to exclude from the ranking


@dataclass
class _Encoded:
    """A user's sequence as model inputs: items, and event-type ids and gap buckets."""

    items: np.ndarray
    types: np.ndarray | None
    gaps: np.ndarray | None


def _encode_user(items: Sequence[int], features: StepFeatures | None, vocab: Mapping[str, int] | None) -> _Encoded:
    array = np.asarray(items, dtype=np.int64)
    if vocab is None:
        return _Encoded(array, None, None)
    if features is None:
        return _Encoded(array, np.full(len(array), UNKNOWN_TYPE, dtype=np.int64), np.ones(len(array), dtype=np.int64))
    if len(features.types) != len(array) or len(features.timestamps) != len(array):
        raise ValueError("features must be parallel to the item list")
    types = np.fromiter((vocab.get(t, UNKNOWN_TYPE) for t in features.types), dtype=np.int64, count=len(array))
    return _Encoded(array, types, gap_buckets(features.timestamps))


def _pad(rows: Sequence[np.ndarray], width: int) -> np.ndarray:
    """Right-padded (len(rows), width, ...), keeping each row's last `width` values."""
    out = np.zeros((len(rows), width, *(rows[0].shape[1:] if len(rows) else ())), dtype=np.int64)
    for i, row in enumerate(rows):
        row = row[-width:]
        out[i, : len(row)] = row
    return out


def _training_windows(users: Sequence[_Encoded], max_len: int, horizon: int = 1) -> _Windows:
    """Every position of every training sequence is a target once: long sequences are
    cut, from the end, into windows of at most max_len steps. Targets (W, max_len,
    horizon): the next `horizon` items after each input step, 0 past the end."""
    items, targets, types, gaps = [], [], [], []
    ahead = np.arange(1, horizon + 1)
    for user in users:
        n = len(user.items) - 1  # inputs 0..n-1 predict items 1..n
        for end in range(n, 0, -max_len):
            start = max(0, end - max_len)
            items.append(user.items[start:end])
            later = np.arange(start, end)[:, None] + ahead[None, :]
            targets.append(np.where(later <= n, user.items[np.minimum(later, n)], 0))
            if user.types is not None and user.gaps is not None:
                types.append(user.types[start:end])
                gaps.append(user.gaps[start:end])
    return _Windows(
        _pad(items, max_len), _pad(targets, max_len),
        _pad(types, max_len) if types else None, _pad(gaps, max_len) if gaps else None,
        np.array([len(w) for w in items], dtype=np.int64),
    )


def _transition_counts(sequences: Sequence[np.ndarray], n_items: int, window: int,
                       backward: float) -> torch.Tensor:
    """Coalesced sparse (n_items + 1)^2 counts: a pair of items k <= window steps apart
    counts 1 from the earlier to the later one and `backward` the other way."""
    rows, cols, values = [], [], []
    for items in sequences:
        for k in range(1, min(window, len(items) - 1) + 1):
            rows += [items[:-k], items[k:]]
            cols += [items[k:], items[:-k]]
            values += [np.ones(len(items) - k), np.full(len(items) - k, backward)]
    if not rows:
        return torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), (n_items + 1, n_items + 1),
                                       check_invariants=False).coalesce()
    index = torch.from_numpy(np.stack([np.concatenate(rows), np.concatenate(cols)]))
    value = torch.from_numpy(np.concatenate(values)).float()
    counts = torch.sparse_coo_tensor(index, value, (n_items + 1, n_items + 1), check_invariants=False).coalesce()
    keep = counts.values() > 0  # backward 0 leaves explicit zeros
    return torch.sparse_coo_tensor(counts.indices()[:, keep], counts.values()[keep], counts.shape,
                                   check_invariants=False).coalesce()


def _row_normalised(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, value) of counts / row sums: P(next = j | item i)."""
    index, value = counts.indices(), counts.values()
    totals = torch.zeros(counts.shape[0]).index_add_(0, index[0], value)
    return index, value / totals[index[0]].clamp(min=1e-12)


def _transition_tensor(index: torch.Tensor, value: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    matrix = torch.sparse_coo_tensor(index, value, shape, check_invariants=False)
    if shape[0] * shape[1] <= DENSE_TRANSITIONS:
        return matrix.to_dense()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return matrix.coalesce().to_sparse_csr()


def _batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of windows of similar length (less padding), seeded."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * 16
    batches: list[np.ndarray] = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def _trim(array: np.ndarray | None, rows: np.ndarray, length: int) -> torch.Tensor | None:
    return None if array is None else torch.from_numpy(np.ascontiguousarray(array[rows, :length]))


# -- objectives ----------------------------------------------------------------------------


def _objective(config: SeqRecConfig, hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor,
               table: torch.Tensor, generator: torch.Generator, log_count: torch.Tensor | None,
               untrained: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss over the real positions of a right-padded batch: hidden (B, L, d), input
    items (B, L), targets (B, L, horizon), 0 on padding and past a sequence's end.

    Softmax losses score each target against one shared set of negatives per position
    (every item, or the sampled ones) from which all of the position's targets are
    removed; with horizon 1 this is plain next-item cross-entropy. `untrained` (n_items + 1,
    bool): items never to be used as negatives."""
    n_items = table.shape[0] - 1
    real = targets[..., 0] > 0
    h, target = hidden[real], targets[real]  # (P, d), (P, H)
    present = target > 0
    positive = (h[:, None, :] * table[target]).sum(-1)  # (P, H)
    if config.loss == "bce":
        negatives = torch.randint(1, n_items + 1, (len(h),), generator=generator)
        negative = (h * table[negatives]).sum(-1)
        hit = (negatives[:, None] == target).any(1)  # an accidental hit is no negative
        if untrained is not None:
            hit = hit | untrained[negatives]
        positives = (F.softplus(-positive) * present).sum(1) / present.sum(1)
        return (positives + F.softplus(negative) * ~hit).mean()
    if config.loss == "softmax" and target.shape[1] == 1:
        # Next item only: one fused cross-entropy over every item (the common case, fast).
        logits = h @ table[1:].T
        if config.exclude_seen:
            excluded = _seen_before(items, real, n_items)[:, 1:]
            excluded[torch.arange(len(target)), target[:, 0] - 1] = False  # the target always competes
            logits = logits.masked_fill(excluded, -1e9)
        if untrained is not None:
            logits = logits.masked_fill(untrained[None, 1:], -1e9)
        return F.cross_entropy(logits, target[:, 0] - 1, label_smoothing=config.label_smoothing)
    if config.loss == "softmax":
        candidates = torch.arange(n_items + 1)
        logits = h @ table.T
        excluded = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, target, True)
        excluded[:, 0] = True
    else:
        candidates = torch.randint(1, n_items + 1, (config.negatives,), generator=generator)
        if config.in_batch_negatives:
            # Mixed negative sampling: as many again drawn from the batch's positives, i.e.
            # by popularity, which uniform negatives almost never are.
            picks = torch.randint(0, len(target), (config.negatives,), generator=generator)
            candidates = torch.cat([candidates, target[picks, 0]])
        logits = h @ table[candidates].T
        excluded = (candidates[None, None, :] == target[:, :, None]).any(1)
    if log_count is not None:
        # logQ correction (sampled softmax): subtract the log expected count of each
        # item in the negative set, for the positives and the negatives alike.
        logits = logits - log_count[candidates]
        positive = positive - log_count[target]
    if config.exclude_seen:
        excluded = excluded | _seen_before(items, real, n_items, candidates)
    if untrained is not None:
        excluded = excluded | untrained[candidates][None, :]
    # Finite, not -inf: a row with every negative excluded must not give NaN gradients.
    log_z = torch.logsumexp(logits.masked_fill(excluded, -1e9), dim=1, keepdim=True)
    losses = torch.logaddexp(log_z, positive) - positive
    return losses[present].mean()


def _seen_before(items: torch.Tensor, real: torch.Tensor, n_items: int,
                 columns: torch.Tensor | None = None) -> torch.Tensor:
    """(P, n_items + 1), or (P, len(columns)) for those items only: at each real position
    (b, t) (`real` a (B, L) mask), whether item i is among items[b, :t+1], the history at
    step t."""
    b, length = items.shape
    steps = torch.arange(length, dtype=torch.int32).expand(b, length)
    first = torch.full((b, n_items + 1), length, dtype=torch.int32)  # the step of an item's first visit
    first.scatter_reduce_(1, items, steps, reduce="amin")
    if columns is not None:
        first = first[:, columns]  # before the rows are expanded: P x C, not P x n_items
    rows, at = real.nonzero(as_tuple=True)
    return first[rows] <= at[:, None]


def _log_expected_count(config: SeqRecConfig, windows: _Windows, n_items: int) -> torch.Tensor:
    """log E[times item i is among a batch's negatives]: K/n from the uniform draw plus
    K * p(i) from the draw among positives (p: training target frequencies)."""
    nexts = windows.targets[..., 0]
    counts = np.bincount(nexts[nexts > 0], minlength=n_items + 1).astype(np.float64)
    expected = config.negatives / n_items + config.negatives * counts / max(counts.sum(), 1.0)
    return torch.from_numpy(np.log(np.maximum(expected, 1e-12))).float()


# -- the trained artefact --------------------------------------------------------------------


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
        if self._transitions_csr is None:
            self._log_prior([np.array([1])], n)  # builds the CSR and the smoothing once
        if self._cold is None:
            cold, neighbours = module.cold_items()
            self._cold = (cold.numpy(), neighbours.numpy())
        cold, cold_neighbours = self._cold
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
        floor = math.log(0.01 / module.n_items)
        if self._cold is None:
            cold, neighbours = module.cold_items()
            self._cold = (cold.numpy(), neighbours.numpy())
        cold, neighbours = self._cold
        if len(cold):
            prior[:, cold] = prior[:, neighbours].max(-1) if neighbours.shape[1] else floor
        if width > n:
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


# -- training --------------------------------------------------------------------------------


def fingerprint(sequences: Mapping[str, Sequence[int]], n_items: int, text_vectors: np.ndarray | None,
                features: Mapping[str, StepFeatures] | None = None) -> str:
    """What the model was trained on, as 16 hex digits (same data, same fingerprint)."""
    digest = hashlib.sha256(f"{n_items}\n".encode())
    for user in sorted(sequences):
        digest.update(user.encode() + b"\t" + np.asarray(sequences[user], dtype=np.int64).tobytes())
        if features and user in features:
            digest.update("\x1f".join(features[user].types).encode())
            digest.update(np.asarray(features[user].timestamps, dtype=np.float64).tobytes())
    if text_vectors is not None:
        digest.update(np.ascontiguousarray(text_vectors, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def _text_table(text_vectors: np.ndarray | None, n_items: int) -> torch.Tensor | None:
    """Accept n_items rows (items 1..n) or n_items + 1 rows (row 0 padding)."""
    if text_vectors is None:
        return None
    vectors = np.asarray(text_vectors, dtype=np.float32)
    if len(vectors) == n_items:
        vectors = np.vstack([np.zeros((1, vectors.shape[1]), dtype=np.float32), vectors])
    if len(vectors) != n_items + 1:
        raise ValueError(f"text_vectors has {len(vectors)} rows; expected {n_items} or {n_items + 1}")
    vectors = vectors.copy()
    vectors[0] = 0.0
    return torch.from_numpy(vectors)


def _validation(users: Sequence[_Encoded], config: SeqRecConfig, rng: np.random.Generator) -> _Validation:
    """The last given item of each user (with a history before it) is the target."""
    chosen = [u for u in users if len(u.items) >= 2]
    if config.valid_users is not None and len(chosen) > config.valid_users:
        keep = np.sort(rng.choice(len(chosen), config.valid_users, replace=False))
        chosen = [chosen[i] for i in keep]
    histories = [u.items[:-1] for u in chosen]
    seen = None
    if config.exclude_seen:
        unique = [np.unique(h) for h in histories]
        seen = _pad(unique, max((len(s) for s in unique), default=1))
    return _Validation(
        _pad(histories, config.max_len),
        _pad([u.types[:-1] for u in chosen], config.max_len) if chosen and chosen[0].types is not None else None,
        _pad([u.gaps[:-1] for u in chosen], config.max_len) if chosen and chosen[0].gaps is not None else None,
        np.array([u.items[-1] for u in chosen], dtype=np.int64), seen,
    )


def _validate(module: SequentialRecommender, valid: _Validation, transitions: torch.Tensor | None = None,
              batch: int = 512) -> tuple[float, float, float]:
    """(NDCG@10, HR@10, prior scale) ranking each target against every item. With the
    transition prior and no given scale, at the scale in TRANSITION_SCALES that ranks best."""
    if not len(valid.targets):
        return 0.0, 0.0, float(module.config.transition_scale or 0.0)
    prior = bool(module.config.transition_window)
    scales = (torch.tensor(TRANSITION_SCALES) if prior and module.config.transition_scale is None
              else torch.tensor([float(module.trans_scale) if prior else 0.0]))
    module.eval()
    ndcg = torch.zeros(len(scales), dtype=torch.float64)
    hits = torch.zeros(len(scales), dtype=torch.float64)
    with torch.inference_mode():
        table = module.item_table()
        for start in range(0, len(valid.targets), batch):
            rows = np.arange(start, min(start + batch, len(valid.targets)))
            length = max(1, int((valid.items[rows] != 0).sum(1).max()))
            items = _trim(valid.items, rows, length)
            assert items is not None
            hidden, out = module.head(module.last(items, table, _trim(valid.types, rows, length),
                                                  _trim(valid.gaps, rows, length)), table)
            network = hidden @ out.T
            log_prior = module.transition_prior(items, transitions) if prior else None
            targets = torch.from_numpy(valid.targets[rows])
            for i, scale in enumerate(scales):
                scores = network if log_prior is None else network + scale * log_prior
                scores[:, 0] = -torch.inf
                target_scores = scores.gather(1, targets[:, None])  # the target always competes
                if valid.seen is not None:
                    scores.scatter_(1, torch.from_numpy(valid.seen[rows]), -torch.inf)
                rank = (scores > target_scores).sum(1).double()
                inside = rank < 10
                ndcg[i] += float((inside / torch.log2(rank + 2)).sum())
                hits[i] += float(inside.sum())
    module.train()
    best = int(ndcg.argmax())  # the first of equals: the smallest scale
    return float(ndcg[best]) / len(valid.targets), float(hits[best]) / len(valid.targets), float(scales[best])


def _count_transitions(module: SequentialRecommender, sequences: Sequence[np.ndarray]) -> None:
    """Set the module's transition prior from these sequences."""
    config, n_items = module.config, module.n_items
    index, value = _row_normalised(_transition_counts(sequences, n_items, config.transition_window,
                                                      config.transition_backward))
    steps = np.bincount(np.concatenate([np.zeros(1, dtype=np.int64), *sequences]), minlength=n_items + 1)
    steps = steps.astype(np.float64)
    steps[0] = 0.0
    module.set_transitions(index, value, torch.from_numpy(steps / max(steps.sum(), 1.0)))


def _lr_factor(config: SeqRecConfig, step: int, total: int) -> float:
    """The learning rate's multiplier at optimiser step `step` (0-based)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.lr_schedule == "cosine":
        done = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))
    return 1.0


def train_sequential(
    sequences: Mapping[str, Sequence[int]],
    n_items: int,
    text_vectors: np.ndarray | None,
    config: SeqRecConfig,
    progress: Callable[[EpochReport], None] | None = None,
    *,
    features: Mapping[str, StepFeatures] | None = None,
    quiet: bool = True,
) -> TrainedModel:
    """Train on each user's sequence but its last item, which is the validation target
    (early stopping on its NDCG@10, full ranking). For leave-one-out testing, pass
    sequences without the test item: training then sees all but the last two.
    With config.holdout False, train on everything for config.epochs (a refit).

    `sequences`: user -> item indices in 1..n_items, oldest first. `text_vectors`:
    (n_items or n_items + 1) x dim, zero rows where an item has no text. `features`:
    per-user event tokens and timestamps (used when config.use_event_features).
    """
    if config.use_text and text_vectors is None:
        raise ValueError("config.use_text needs text_vectors")
    if config.use_event_features and features is None:
        raise ValueError("config.use_event_features needs features")
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    users_sorted = sorted(sequences)
    event_types = sorted({t for f in (features or {}).values() for t in f.types}) if config.use_event_features else []
    vocab = {name: i + 2 for i, name in enumerate(event_types)} if config.use_event_features else None
    users = [_encode_user(sequences[u], (features or {}).get(u), vocab) for u in users_sorted]
    for user in users:
        if len(user.items) and (user.items.min() < 1 or user.items.max() > n_items):
            raise ValueError("item indices must lie in 1..n_items")
    if config.holdout:
        tail = config.holdout_tail
        train_users = [_Encoded(u.items[:-tail], None if u.types is None else u.types[:-tail],
                                None if u.gaps is None else u.gaps[:-tail]) for u in users]
    else:
        train_users = users
    windows = _training_windows(train_users, config.max_len, config.horizon)
    valid = _validation(users, config, rng) if config.holdout else None
    if not len(windows.lengths):
        raise ValueError("no training data: users need more items")

    with torch.random.fork_rng(devices=[]), torch_threads(config.threads):
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        module = SequentialRecommender(config, n_items, len(event_types), text_vectors.shape[1] if text_vectors is not None else TEXT_DIM)
        text = _text_table(text_vectors, n_items)
        if text is not None and config.use_text:
            module.set_text(text, config.whiten_text)
        with torch.no_grad():
            trained = np.zeros(n_items + 1, dtype=bool)
            trained[windows.items[windows.items > 0]] = True
            trained[windows.targets[windows.targets > 0]] = True
            module.id_mask.copy_(torch.from_numpy(trained.astype(np.float32))[:, None])
        untrained = None if config.untrained_negatives else torch.from_numpy(~trained)
        transitions = None
        if config.transition_window:
            _count_transitions(module, [u.items for u in train_users])
            transitions = module.transition_matrix()
        optimiser = torch.optim.AdamW(module.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                      betas=(0.9, 0.98))
        steps_per_epoch = len(_batches(windows.lengths, config.batch_size, np.random.default_rng(0)))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda step: _lr_factor(config, step, steps_per_epoch * config.epochs))
        log_count = (_log_expected_count(config, windows, n_items)
                     if config.loss == "sampled_softmax" and config.in_batch_negatives else None)

        best = (-1.0, 0.0)
        best_epoch, stale = 0, 0
        best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        history: list[dict[str, float]] = []
        stopped = "epochs"
        with progress_bar("training sequential model", config.epochs, quiet=quiet) as advance:
            for epoch in range(1, config.epochs + 1):
                epoch_started = time.perf_counter()
                module.train()
                total, count = 0.0, 0
                for rows in _batches(windows.lengths, config.batch_size, rng):
                    length = int(windows.lengths[rows].max())
                    items = _trim(windows.items, rows, length)
                    targets = _trim(windows.targets, rows, length)
                    assert items is not None and targets is not None
                    table = module.item_table()
                    hidden = module.encode(items, table, _trim(windows.types, rows, length),
                                           _trim(windows.gaps, rows, length))
                    hidden, out = module.head(hidden, table)
                    loss = _objective(config, hidden, items, targets, out, generator, log_count, untrained)
                    real = targets[..., 0] > 0
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    if config.grad_clip:
                        nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
                    optimiser.step()
                    schedule.step()
                    total += float(loss.detach()) * int(real.sum())
                    count += int(real.sum())
                if valid is None:
                    ndcg = hr = float("nan")
                    best_epoch = epoch
                else:
                    ndcg, hr, scale = _validate(module, valid, transitions)
                    if ndcg > best[0]:
                        best, best_epoch, stale = (ndcg, hr), epoch, 0
                        if config.transition_window:
                            module.trans_scale.fill_(scale)
                        best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
                    else:
                        stale += 1
                now = time.perf_counter()
                elapsed = now - started
                per_epoch = (now - started) / epoch
                eta = per_epoch * min(config.epochs - epoch, config.patience - stale)
                if config.max_seconds is not None:
                    eta = min(eta, max(0.0, config.max_seconds - elapsed))
                history.append({"epoch": epoch, "loss": total / max(count, 1), "valid_ndcg10": ndcg,
                                "valid_hr10": hr, "seconds": now - epoch_started})
                advance(1)
                if progress is not None:
                    progress(EpochReport(epoch, config.epochs, total / max(count, 1), ndcg, hr, best_epoch,
                                         now - epoch_started, elapsed, eta))
                if stale >= config.patience:
                    stopped = "patience"
                    break
                if config.max_seconds is not None and elapsed + per_epoch > config.max_seconds:
                    stopped = "time budget"
                    break
        if valid is not None:
            module.load_state_dict(best_state)
            if config.transition_window:
                # Counting is cheap and the validation steps are the latest: the artefact's
                # prior counts every given item (its scale was weighed without them).
                _count_transitions(module, [u.items for u in users])
        module.eval()

    seconds = time.perf_counter() - started
    metrics: dict[str, Any] = {
        "valid_ndcg10": best[0] if valid is not None else None,
        "valid_hr10": best[1] if valid is not None else None, "best_epoch": best_epoch,
        "epochs_run": len(history), "stopped_by": stopped, "train_windows": int(len(windows.lengths)),
        "train_positions": int(windows.lengths.sum()), "valid_users": int(len(valid.targets)) if valid is not None else 0,
        **({"transition_scale": float(module.trans_scale)} if config.transition_window else {}),
        "history": history,
    }
    data_fingerprint = fingerprint(sequences, n_items, text_vectors, features if config.use_event_features else None)
    created = datetime.now(timezone.utc)
    weights = hashlib.sha256(data_fingerprint.encode())
    for name, tensor in module.state_dict().items():
        weights.update(name.encode() + tensor.numpy().tobytes())
    version = f"seqrec-{created:%Y%m%dT%H%M%S}-{weights.hexdigest()[:8]}"
    return TrainedModel(module, config, event_types, metrics, seconds, data_fingerprint,
                        created.isoformat(timespec="microseconds"), version)  # the registry sorts by it
