"""The training objectives: _objective (full softmax, sampled softmax with in-batch and
uniform negatives, or SASRec's BCE, over each position's next `horizon` items),
_seen_before (a history's items, excluded as negatives) and _log_expected_count (the
logQ correction of sampled softmax).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kairos.models.sequential.config import SeqRecConfig
from kairos.models.sequential.data import _Windows


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
