"""Training the behaviour model from the store: what `kairos train`, the background
trainer and the evaluation harness all call."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kairos.config import Settings
from kairos.store import Store, shared_artefacts
from kairos.training.registry import ModelRegistry, RegisteredModel

if TYPE_CHECKING:
    from kairos.models import EpochReport, SeqRecConfig, TrainedModel
    from kairos.training.data import Embed, TrainingData

log = logging.getLogger(__name__)


class NotEnoughData(ValueError):
    """The log holds too little behaviour to train on."""


@dataclass
class TrainingRun:
    model: TrainedModel
    data: TrainingData
    preset: str


def model_dir(settings: Settings, db_path: Path | None = None) -> Path:
    """The registry folder: KAIROS_MODEL_DIR, or <database>.models beside the database."""
    if settings.model_dir is not None:
        return settings.model_dir
    path = Path(db_path or settings.db_path)
    return path.with_name(path.name + ".models")


def registry(settings: Settings, db_path: Path | None = None) -> ModelRegistry:
    """The folder; with a PostgreSQL store, the versions every node shares as well."""
    return ModelRegistry(model_dir(settings, db_path), keep=settings.models_kept,
                         shared=shared_artefacts(settings.store_url))


def choose_preset(settings: Settings, data: TrainingData) -> str:
    if settings.sequential_preset != "auto":
        return settings.sequential_preset
    return "long" if data.summary()["median_length"] >= settings.sequential_long_median else "short"


def resolve_config(settings: Settings, data: TrainingData, overrides: dict[str, Any] | None = None) -> tuple[str, SeqRecConfig]:
    """The preset, then KAIROS_SEQUENTIAL_CONFIG, then `overrides`; text off without text."""
    from kairos.models import preset_config  # torch loads only when a model is trained

    preset = choose_preset(settings, data)
    fields: dict[str, Any] = {**settings.sequential_config, **(overrides or {})}
    if data.text_vectors is None and fields.get("use_text", True):
        fields["use_text"] = False
        fields["use_ids"] = True
    return preset, preset_config(preset, **fields)


def check_overrides(overrides: dict[str, Any]) -> None:
    """ValueError naming the first unknown or invalid SeqRecConfig field (before any work)."""
    from dataclasses import fields

    from kairos.models import SeqRecConfig

    known = {f.name for f in fields(SeqRecConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown model config field {unknown[0]!r}; known: {', '.join(sorted(known))}")
    try:
        SeqRecConfig(**overrides)
    except (TypeError, ValueError) as error:
        raise ValueError(f"invalid model config: {error}") from None


def train_from_store(
    store: Store,
    settings: Settings,
    embed: Embed | None,
    progress: Callable[[EpochReport], None] | None = None,
    overrides: dict[str, Any] | None = None,
    quiet: bool = False,
) -> TrainingRun:
    """Read the log, train with early stopping on each user's last visit, return the model."""
    from kairos.models import train_sequential
    from kairos.training.data import training_data

    data = training_data(store, settings, embed, quiet=quiet)
    trainable = sum(1 for s in data.sequences.values() if len(s) >= 3)
    if trainable == 0:
        raise NotEnoughData("no user has three visits yet: nothing to learn a sequence from")
    preset, config = resolve_config(settings, data, overrides)
    log.info("training the sequential model (%s preset) on %s", preset, data.summary())
    model = train_sequential(
        data.sequences, data.n_items, data.text_vectors if config.use_text else None, config, progress,
        features=data.features if config.use_event_features else None, quiet=quiet,
    )
    return TrainingRun(model, data, preset)


def publish(run: TrainingRun, target: ModelRegistry) -> Path:
    """Write the run's artefact into the registry and make it the current version."""
    return target.publish(run.model, run.data.item_ids, training_summary(run))


def as_registered(run: TrainingRun, path: Path | None = None) -> RegisteredModel:
    """A run as the engine serves it (without writing it anywhere, for evaluation)."""
    return RegisteredModel(run.model, run.data.item_ids, path or Path(), training_summary(run))


def training_summary(run: TrainingRun) -> dict[str, Any]:
    return {"preset": run.preset, "data": run.data.summary()}
