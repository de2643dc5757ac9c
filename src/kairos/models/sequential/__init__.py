"""The behaviour model: a causal transformer over each user's item sequence (the
SASRec / HSTU family), text-aware so that an item nobody has interacted with yet
still has a representation, small enough to train on a laptop CPU in minutes.

Conventions: item indices run 1..n_items and 0 is padding. Scores cover indices
0..n_items with index 0 at -inf, so a score's position is its item's index.

One concept a module, each importing only those above it:

- `config.py`: SeqRecConfig, the presets (SEQREC_PRESETS, preset_config) and the
  choices a config is checked against.
- `data.py`: step features (StepFeatures, event_token, gap buckets), users encoded as
  model inputs, training windows and batches, the validation set, the data fingerprint.
- `network.py`: the torch module, SequentialRecommender, and its transition prior
  (counting transitions, the dense or sparse matrix).
- `objective.py`: the training losses (full and sampled softmax, BCE, logQ correction).
- `artefact.py`: TrainedModel, the trained model: scoring, item -> user targeting,
  save and load (`model.pt` and `config.json`).
- `trainer.py`: train_sequential, EpochReport, the learning-rate schedule, validation.
"""

from __future__ import annotations

from kairos.models.sequential.artefact import FORMAT_VERSION, TrainedModel
from kairos.models.sequential.config import (
    COLD_PRIORS,
    LOSSES,
    LR_SCHEDULES,
    SEQREC_PRESETS,
    TRANSITION_SCALES,
    SeqRecConfig,
    preset_config,
)
from kairos.models.sequential.data import (
    GAP_BUCKETS,
    UNKNOWN_TYPE,
    StepFeatures,
    event_token,
    fingerprint,
    gap_buckets,
)
from kairos.models.sequential.network import (
    DENSE_TRANSITIONS,
    TEXT_DIM,
    SequentialRecommender,
)
from kairos.models.sequential.trainer import EpochReport, train_sequential

__all__ = [
    "COLD_PRIORS", "DENSE_TRANSITIONS", "FORMAT_VERSION", "GAP_BUCKETS", "LOSSES", "LR_SCHEDULES", "SEQREC_PRESETS",
    "TEXT_DIM", "TRANSITION_SCALES", "UNKNOWN_TYPE", "EpochReport", "SeqRecConfig", "SequentialRecommender",
    "StepFeatures", "TrainedModel", "event_token", "fingerprint", "gap_buckets", "preset_config", "train_sequential",
]
