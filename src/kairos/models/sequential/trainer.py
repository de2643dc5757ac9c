"""Training: train_sequential (encode the users, hold out each one's last items, train
with early stopping on the validation NDCG@10, count the transition prior, return a
TrainedModel), its per-epoch EpochReport, the learning-rate schedule (_lr_factor) and
the validation ranking (_validate, which also picks the transition prior's scale).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from torch import nn

from kairos.models.sequential.artefact import TrainedModel
from kairos.models.sequential.config import TRANSITION_SCALES, SeqRecConfig
from kairos.models.sequential.data import (
    StepFeatures,
    _batches,
    _encode_user,
    _Encoded,
    _text_table,
    _training_windows,
    _trim,
    _Validation,
    _validation,
    fingerprint,
)
from kairos.models.sequential.network import (
    TEXT_DIM,
    SequentialRecommender,
    _count_transitions,
)
from kairos.models.sequential.objective import _log_expected_count, _objective
from kairos.progress import progress as progress_bar
from kairos.threads import torch_threads


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
