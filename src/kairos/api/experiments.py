"""/v1/experiments: create, read (with the report), list and stop A/B experiments."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse

from kairos.api.errors import error_body
from kairos.engine import NotFound
from kairos.experiments.schema import (
    Experiment,
    ExperimentList,
    ExperimentReport,
    ExperimentSpec,
    StopRequest,
)
from kairos.experiments.service import ExperimentConflict, ExperimentService, UnknownArm

ExperimentIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


def get_experiments(request: Request) -> ExperimentService:
    return request.app.state.experiments  # type: ignore[no-any-return]


ExperimentsDep = Annotated[ExperimentService, Depends(get_experiments)]


def experiments_router() -> APIRouter:
    router = APIRouter(tags=["experiments"])

    @router.post("/v1/experiments", status_code=201, response_model=Experiment)
    def create_experiment(spec: ExperimentSpec, experiments: ExperimentsDep) -> Any:
        """Start an experiment: from now on each user is in one arm (a stable hash of
        experiment and user) and gets that arm's config. One runs at a time (409)."""
        try:
            return experiments.create(spec)
        except ExperimentConflict as error:
            return JSONResponse(error_body("conflict", str(error), {"field": "id"}), status_code=409)

    @router.get("/v1/experiments", response_model=ExperimentList)
    def list_experiments(experiments: ExperimentsDep) -> dict[str, Any]:
        return {"experiments": experiments.list()}

    @router.get("/v1/experiments/{experiment_id}", response_model=ExperimentReport)
    def get_experiment(experiment_id: ExperimentIdPath, experiments: ExperimentsDep) -> dict[str, Any]:
        """The experiment with, per arm, users, requests, impressions, conversions, the rate
        and its 95% interval, the difference from the first arm with its interval and
        p-value, and the sample-ratio-mismatch check."""
        try:
            return experiments.report(experiment_id)
        except KeyError:
            raise NotFound("experiment", experiment_id) from None

    @router.post("/v1/experiments/{experiment_id}/stop", response_model=ExperimentReport)
    def stop_experiment(experiment_id: ExperimentIdPath, experiments: ExperimentsDep,
                        request: StopRequest | None = None) -> Any:
        """Stop assigning; with a `winner`, every request gets that arm's config from now on."""
        try:
            experiments.stop(experiment_id, request.winner if request else None)
            return experiments.report(experiment_id)
        except KeyError:
            raise NotFound("experiment", experiment_id) from None
        except UnknownArm as error:
            return JSONResponse(error_body("validation_error", str(error),
                                           [{"field": "winner", "message": str(error)}]), status_code=422)

    return router
