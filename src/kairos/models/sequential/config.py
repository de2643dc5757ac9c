"""The behaviour model's settings: SeqRecConfig (architecture, objective and training
schedule, saved with the model), the named presets (SEQREC_PRESETS, preset_config) and
the choices a config is checked against (LOSSES, LR_SCHEDULES, COLD_PRIORS), with the
transition-prior scales that validation tries (TRANSITION_SCALES). No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LOSSES = ("softmax", "sampled_softmax", "bce")
LR_SCHEDULES = ("constant", "cosine")
COLD_PRIORS = ("neighbours", "floor")
# Weights of the transition prior tried on the validation set (0: the network alone).
TRANSITION_SCALES = (0.0, *(2.0 ** (k / 2) for k in range(-4, 11)))


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
