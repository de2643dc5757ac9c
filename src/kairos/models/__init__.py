"""Trained models: the behaviour model (a causal transformer over each user's sequence,
`sequential/`) and matrix factorisation on implicit feedback (`als.py`).

Names are imported on first use, so reading `kairos.models.als` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_SEQUENTIAL = (
    "SEQREC_PRESETS",
    "EpochReport",
    "SeqRecConfig",
    "SequentialRecommender",
    "StepFeatures",
    "TrainedModel",
    "event_token",
    "preset_config",
    "train_sequential",
)

__all__ = [*_SEQUENTIAL, "AlsModel"]


def __getattr__(name: str) -> Any:
    if name in _SEQUENTIAL:
        return getattr(importlib.import_module("kairos.models.sequential"), name)
    if name == "AlsModel":
        return importlib.import_module("kairos.models.als").AlsModel
    raise AttributeError(f"module 'kairos.models' has no attribute {name!r}")
