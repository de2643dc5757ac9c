"""The shapes of /v1/experiments."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ExperimentId = str
TRAFFIC_TOLERANCE = 1e-6


class ArmConfig(BaseModel):
    """What an arm changes in the served list; an absent field keeps the service's own."""

    model_config = ConfigDict(extra="forbid")

    sources: list[str] | None = Field(default=None, description="Only these sources are fused.")
    weights: dict[str, float] | None = Field(default=None, description="Fusion weights over the configured ones.")
    ranker: bool | None = Field(default=None, description="Order with the learned ranker (when one is trained).")
    diversity: float | None = Field(default=None, ge=0, le=1, description="MMR diversity, as the query parameter.")
    llm: bool | None = Field(default=None, description="Apply the language model's list rules.")

    @field_validator("weights")
    @classmethod
    def _finite(cls, weights: dict[str, float] | None) -> dict[str, float] | None:
        for name, value in (weights or {}).items():
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"weight of {name!r} must be a finite number >= 0")
        return weights


class Arm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    config: ArmConfig = Field(default_factory=ArmConfig)
    traffic: float = Field(gt=0, le=1, description="Share of users assigned to this arm.")


class ExperimentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: ExperimentId = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    arms: list[Arm] = Field(min_length=2, max_length=16)
    metric: Literal["click", "purchase"] = "click"

    @model_validator(mode="after")
    def _arms(self) -> ExperimentSpec:
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ValueError("arms: names must be unique")
        total = sum(arm.traffic for arm in self.arms)
        if abs(total - 1.0) > TRAFFIC_TOLERANCE:
            raise ValueError(f"arms: traffic must add up to 1, got {total:g}")
        return self


class StopRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    winner: str | None = Field(default=None, min_length=1, max_length=64,
                               description="An arm whose config every request gets from now on.")


class Experiment(ExperimentSpec):
    """An experiment as the API shows it: its spec and where it stands."""

    model_config = ConfigDict(extra="allow")

    status: Literal["running", "stopped"]
    created_at: float
    stopped_at: float | None = None
    winner: str | None = None


class ArmReport(BaseModel):
    """One arm's counts and conversion rate (conversions per impression, 95% interval);
    the arms after the first also carry `vs_<first arm>`: the difference, its interval
    and p-value."""

    model_config = ConfigDict(extra="allow")

    name: str
    traffic: float
    config: dict[str, Any]
    users: int
    requests: int
    impressions: int
    conversions: int
    rate: float
    rate_low: float
    rate_high: float


class ExperimentReport(Experiment):
    arms: list[ArmReport]  # type: ignore[assignment]  # the spec's arms, with their statistics
    control: str
    sample_ratio: dict[str, Any] = Field(description="chi2, p_value, mismatch: users per arm against traffic.")


class ExperimentList(BaseModel):
    experiments: list[Experiment]
