"""Trained models: the behaviour model (a causal transformer over each user's sequence)."""

from kairos.models.sequential import (
    EpochReport,
    SeqRecConfig,
    SequentialRecommender,
    StepFeatures,
    TrainedModel,
    event_token,
    train_sequential,
)

__all__ = [
    "EpochReport",
    "SeqRecConfig",
    "SequentialRecommender",
    "StepFeatures",
    "TrainedModel",
    "event_token",
    "train_sequential",
]
