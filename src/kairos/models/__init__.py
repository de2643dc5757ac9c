"""Trained models: the behaviour model (a causal transformer over each user's sequence)."""

from kairos.models.sequential import (
    SEQREC_PRESETS,
    EpochReport,
    SeqRecConfig,
    SequentialRecommender,
    StepFeatures,
    TrainedModel,
    event_token,
    preset_config,
    train_sequential,
)

__all__ = [
    "SEQREC_PRESETS",
    "EpochReport",
    "SeqRecConfig",
    "SequentialRecommender",
    "StepFeatures",
    "TrainedModel",
    "event_token",
    "preset_config",
    "train_sequential",
]
