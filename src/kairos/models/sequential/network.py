"""The torch network: SequentialRecommender (a causal transformer over right-padded item
sequences, items from their ids and their frozen text, tied input and output table) and
its pre-LN transformer block (_Block), with the transition prior it adds to its scores:
counting item-to-item transitions on training sequences (_transition_counts,
_row_normalised, _count_transitions) and the matrix, dense or sparse CSR
(_transition_tensor, DENSE_TRANSITIONS).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kairos.models.sequential.config import SeqRecConfig
from kairos.models.sequential.data import GAP_BUCKETS

TEXT_DIM = 384
# A transition matrix with at most this many cells is used dense (fast); above, sparse.
DENSE_TRANSITIONS = 1 << 24  # entries: 64 MB of float32 (about 4,000 items); sparse CSR above


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

    def last_step(self, x: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """`forward(x)[arange(b), last]` (b, width), computing the output of step `last` of
        each row only: every step's keys and values, one query, one feed-forward row."""
        b, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        rows = torch.arange(b, device=x.device)
        query = q[rows, :, last].unsqueeze(2)  # (b, heads, 1, head width)
        # Causal for that one step: it sees steps 0..last of its row (padding lies after).
        mask = None
        if bool((last != length - 1).any()):
            mask = (torch.arange(length, device=x.device)[None, :] <= last[:, None])[:, None, None, :]
        attended = F.scaled_dot_product_attention(query, k, v, attn_mask=mask)
        y = x[rows, last] + self.drop(self.proj(attended.reshape(b, width)))
        return y + self.drop(self.ffn(self.norm2(y)))


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
        x = self._inputs(items, table, types, gaps)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)

    def _inputs(self, items: torch.Tensor, table: torch.Tensor, types: torch.Tensor | None,
                gaps: torch.Tensor | None) -> torch.Tensor:
        valid = items != 0
        positions = torch.arange(1, items.shape[1] + 1, device=items.device) * valid  # 0 on padding
        x = table[items] + self.positions(positions)
        if self.event_types is not None and types is not None:
            x = x + self.event_types(types)
        if self.gaps is not None and gaps is not None:
            x = x + self.gaps(gaps)
        return self.input_drop(x)

    def last(self, items: torch.Tensor, table: torch.Tensor, types: torch.Tensor | None = None,
             gaps: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden state (B, width) after each sequence's last real step (`encode` at that
        step): the last block computes that step only, the one a query needs."""
        x = self._inputs(items, table, types, gaps)
        for block in self.blocks[:-1]:
            x = block(x)
        last = ((items != 0).sum(1) - 1).clamp(min=0)  # an empty sequence reads its padding step
        return self.final_norm(self.blocks[-1].last_step(x, last))

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


# -- the transition prior: counted on training sequences, as a matrix ------------------------


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


def _count_transitions(module: SequentialRecommender, sequences: Sequence[np.ndarray]) -> None:
    """Set the module's transition prior from these sequences."""
    config, n_items = module.config, module.n_items
    index, value = _row_normalised(_transition_counts(sequences, n_items, config.transition_window,
                                                      config.transition_backward))
    steps = np.bincount(np.concatenate([np.zeros(1, dtype=np.int64), *sequences]), minlength=n_items + 1)
    steps = steps.astype(np.float64)
    steps[0] = 0.0
    module.set_transitions(index, value, torch.from_numpy(steps / max(steps.sum(), 1.0)))
