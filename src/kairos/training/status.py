"""What the API shows of the models: the one serving, the registry's versions, the
background training jobs (GET /v1/models). Plain shapes: the Python client reads them too."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelVersion(BaseModel):
    """A version in the registry (its config.json, without the epoch history)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    version: str
    created_at: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    data_fingerprint: str | None = None
    training_seconds: float | None = None
    config: dict[str, Any] | None = None


class ServedSequential(ModelVersion):
    """The behaviour model serving now, with the preset and the data it was trained on."""

    preset: str | None = None
    data: dict[str, Any] | None = None


class TrainingJobOut(BaseModel):
    """A background training run (the latest of each kind)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    id: int
    reason: str
    model: Literal["sequential", "ranker"] = "sequential"
    state: Literal["running", "succeeded", "failed"]
    started_at: str
    finished_at: str | None = None
    pid: int | None = None
    version: str | None = None
    error: str | None = None
    progress: dict[str, Any] = Field(default_factory=dict, description="The latest epoch's report.")
    log_tail: list[str] = Field(default_factory=list)


class ModelsStatus(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model_version: str = Field(description="As in every recommendation: the online state, plus the "
                                           "behaviour model's version when one serves.")
    sequential: ServedSequential | None = None
    ranking: dict[str, Any] | None = Field(default=None, description="The ranking model: its mode "
                                           "(learned, fitted, configured), weights, report.")
    training: TrainingJobOut | None = None
    ranking_training: TrainingJobOut | None = None
    versions: list[ModelVersion] = Field(default_factory=list)
    language_model: dict[str, Any] | None = Field(default=None, description="Backend, state, queue, "
                                                  "event -> list latency (GET /v1/models only).")


class TrainingStarted(BaseModel):
    training: TrainingJobOut
