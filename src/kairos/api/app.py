"""The FastAPI app factory. The contract of /v1 is fixed: extend it, don't change it."""

import asyncio
import hashlib
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import Body, Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kairos import __version__
from kairos.api.auth import AuthMiddleware, KeyFile, parse_keys
from kairos.api.auth.middleware import Authenticator
from kairos.api.content import JsonBodies
from kairos.api.errors import UnexpectedErrors, error_body, install_error_handlers
from kairos.api.experiments import experiments_router
from kairos.api.limits import (
    BodySizeLimit,
    RequestRateLimit,
    UrlLengthLimit,
    UserEventLimit,
    UserEventsLimited,
    buckets_for,
)
from kairos.api.metrics import ApiMetrics, RequestMiddleware
from kairos.api.paths import ItemId, UserId
from kairos.api.push import push_router
from kairos.dashboard import mount_dashboard
from kairos.engine import Engine, NotFound
from kairos.experiments.service import ExperimentService
from kairos.pseudonyms import Pseudonyms
from kairos.push.metrics import OutboxCollector, PushMetrics
from kairos.push.service import PushService
from kairos.replica.follower import FollowLoop
from kairos.replica.leader import Candidacy, lease_for
from kairos.replica.snapshot import Snapshotter
from kairos.schema import (
    Accepted,
    ActivateRequest,
    EventBatch,
    Forgotten,
    Health,
    ItemBatch,
    ItemFields,
    ItemOut,
    ItemsUpserted,
    Recommendations,
    SearchResults,
    SimilarItems,
    TrainRequest,
    User,
    UserFields,
    UserView,
)
from kairos.store import BatchKey, ItemRecord, KeyReused
from kairos.training.background import ModelManager, TrainingInProgress
from kairos.training.pipeline import check_overrides
from kairos.training.status import ModelsStatus, TrainingStarted

log = logging.getLogger(__name__)


def get_engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


EngineDep = Annotated[Engine, Depends(get_engine)]


def item_out(record: ItemRecord) -> ItemOut:
    return ItemOut(item_id=record.item_id, title=record.title, text=record.text, categories=record.categories,
                   attributes=record.attributes, created_at=record.created_at, available=record.available)


def create_app(engine: Engine, manage_models: bool = True, push: bool | None = None,
               owns_engine: bool = False) -> FastAPI:
    """`manage_models`: follow the model registry and train in the background (see
    training/background.py) for as long as the app runs. `push`: run push (triggers,
    the outbox and its delivery; default: KAIROS_PUSH_ENABLED).

    Several processes may serve one database (`kairos serve --workers N`): each follows
    the log; the one holding the leader lease (replica/leader.py) also trains, decides
    and delivers push, and runs the language model. Live streams and reads work in all.
    `owns_engine`: close the engine when the app stops (the leader saves the vector index)."""
    lease = lease_for(engine.settings.store_url, engine.store_path())
    leading = lease.try_acquire()
    manager = ModelManager(engine, may_train=lambda: lease.held)
    metrics = ApiMetrics(engine)
    follow = FollowLoop(engine.catch_up, engine.settings.follow_interval_s, engine.store.wait_for_writes)
    settings = engine.settings
    snapshotter = Snapshotter(engine.snapshot_to, lambda: engine.follower.events_at,
                              lambda: not engine.recounting(), settings.snapshot_interval_s,
                              settings.snapshot_min_events)
    snapshots_on = settings.snapshot_interval_s > 0
    push_service = None
    if engine.settings.push_enabled if push is None else push:
        push_service = PushService(engine, metrics=PushMetrics(metrics.registry), decide=leading)
        metrics.registry.register(OutboxCollector(push_service.outbox))
    experiments = ExperimentService(engine.store_path(), clock=engine.clock, settings=engine.settings)
    engine.listeners.add(experiments)  # attribution: events that name the list they answer
    llm_service = None
    # One model per database, the leader's; with Redis every other process serves its lists.
    if engine.settings.llm != "off" and (leading or engine.settings.redis_url):
        from kairos.llm.cache import list_cache_for
        from kairos.llm.service import LlmService

        # A list that lands re-sends the user's live stream; notifications due later get the
        # model's text (both only where push runs).
        llm_service = LlmService(engine, on_ready=(lambda user: push_service.hub.poke("lists", [user]))
                                 if push_service is not None else None,
                                 on_copy=push_service.outbox.set_body if push_service is not None else None,
                                 computes=leading, cache=list_cache_for(engine.settings.redis_url))
        if push_service is not None and leading:
            push_service.copywriter = llm_service.write_copy

    def elected() -> None:
        """Another process held the lease and is gone: take over its background work."""
        log.info("this process (pid %d) now leads %s", os.getpid(), engine.store_path())
        if push_service is not None:
            push_service.start_deciding()
        if snapshots_on:
            snapshotter.start(written_at=engine.follower.events_at)

    candidacy = Candidacy(lease, elected, engine.settings.leader_retry_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        experiments.start()
        follow.start()
        if manage_models:
            manager.start()
        if push_service is not None:
            push_service.hub.bind(asyncio.get_running_loop())
            push_service.start()
        if llm_service is not None:
            llm_service.start()  # loads the model in its own thread: the port opens at once
        if not leading:
            candidacy.start()
        elif snapshots_on:
            # After a replay, one soon: the next start (of any process) need not replay.
            snapshotter.start(written_at=engine.follower.events_at if engine.started_from == "snapshot" else None)
        try:
            yield
        finally:
            candidacy.stop()
            if snapshots_on:
                snapshotter.stop(final=lease.held)
            if llm_service is not None:
                llm_service.stop()
            manager.stop()
            if push_service is not None:
                push_service.stop()
                push_service.close()
            follow.stop()
            engine.listeners.remove(experiments)
            experiments.close()
            if owns_engine:
                engine.close(save_vectors=lease.held)
            lease.release()

    app = FastAPI(
        title="Kairos",
        version=__version__,
        description="Real-time personalized recommendation and push.",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.lease = lease
    app.state.models = manager
    app.state.push = push_service
    app.state.llm = llm_service
    app.state.experiments = experiments
    app.state.metrics = metrics
    install_error_handlers(app)
    user_events = None
    if settings.user_event_rate_limit > 0:
        rate = settings.user_event_rate_limit
        burst = settings.user_event_burst or max(100.0, 10 * rate)
        user_events = UserEventLimit(rate, burst, buckets_for(settings, "user-events", rate, burst))

    @app.exception_handler(UserEventsLimited)
    async def _user_flood(request: Request, exc: UserEventsLimited) -> JSONResponse:
        users = sorted(exc.waits)
        return JSONResponse(error_body("rate_limited", str(exc), {"users": users[:100], "limit_per_second": exc.rate}),
                            status_code=429, headers={"Retry-After": str(exc.retry_after)})

    # Outermost last: metrics and request ids see every answer, then the URL, the key,
    # the caller's rate and the body's size are checked before any work is done.
    app.add_middleware(UnexpectedErrors)
    app.add_middleware(JsonBodies)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    if settings.rate_limit > 0:
        burst = settings.rate_burst or max(1.0, 2 * settings.rate_limit)
        app.add_middleware(RequestRateLimit, buckets=buckets_for(settings, "requests", settings.rate_limit, burst))
    authenticator = Authenticator(parse_keys(settings.api_keys), KeyFile(settings.keys_path()))
    app.state.authenticator = authenticator
    app.add_middleware(AuthMiddleware, authenticator=authenticator)
    app.add_middleware(UrlLengthLimit)
    app.add_middleware(RequestMiddleware, metrics=metrics)

    max_n = engine.settings.max_n
    ids = Pseudonyms(engine.settings.pseudonymise_key)  # the user ids kept: docs/security.md
    app.state.ids = ids

    # -- events ---------------------------------------------------------------------------

    @app.post("/v1/events", response_model=Accepted, tags=["events"],
              responses={409: {"description": "The Idempotency-Key came before with another batch."}})
    def post_events(
        batch: EventBatch, engine: EngineDep,
        idempotency_key: Annotated[str | None, Header(
            alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$",
            description="Any unique string (a UUID): a batch retried with its key is stored once, "
                        "for 24 hours; the retry gets the first answer.")] = None,
    ) -> Any:
        """Store a batch of events durably and update online state. All or nothing: one
        invalid event rejects the batch with 422 naming its index and field."""
        events = batch.events
        if ids.active:
            events = [event.model_copy(update={"user_id": ids.user(event.user_id)}) for event in events]
        if user_events is not None:
            user_events.take(event.user_id for event in events)
        key = None
        if idempotency_key is not None:
            digest = hashlib.sha256(batch.model_dump_json().encode("utf-8")).hexdigest()
            key = BatchKey(idempotency_key, digest)
        try:
            accepted = engine.ingest(events, key)
        except KeyReused as error:
            return JSONResponse(error_body("idempotency_key_reused", str(error),
                                           [{"field": "Idempotency-Key", "message": str(error)}]), status_code=409)
        for kind, count in Counter(event.type.value for event in batch.events).items():
            metrics.events.labels(kind).inc(count)
        return Accepted(accepted=accepted)

    # -- items ----------------------------------------------------------------------------

    @app.put("/v1/items/{item_id}", response_model=ItemOut, tags=["items"])
    def put_item(item_id: ItemId, fields: ItemFields, engine: EngineDep) -> ItemOut:
        return item_out(engine.upsert_item(item_id, fields))

    @app.post("/v1/items", response_model=ItemsUpserted, tags=["items"])
    def post_items(batch: ItemBatch, engine: EngineDep) -> ItemsUpserted:
        return ItemsUpserted(upserted=len(engine.upsert_items(batch.items)))

    @app.get("/v1/items/{item_id}", response_model=ItemOut, tags=["items"])
    async def get_item(item_id: ItemId, engine: EngineDep) -> ItemOut:
        return item_out(engine.get_item(item_id))

    @app.delete("/v1/items/{item_id}", response_model=ItemOut, tags=["items"])
    def delete_item(item_id: ItemId, engine: EngineDep) -> ItemOut:
        """Mark the item unavailable: it keeps its history, it is never recommended."""
        return item_out(engine.delete_item(item_id))

    @app.get("/v1/items/{item_id}/similar", response_model=SimilarItems, tags=["items"])
    async def similar_items(
        request: Request,
        item_id: ItemId,
        engine: EngineDep,
        n: Annotated[int, Query(ge=1, le=max_n)] = 10,
        method: Annotated[Literal["hybrid", "semantic", "covisit"], Query(
            description="semantic: nearest in text; covisit: chosen next by others; hybrid: both")] = "hybrid",
    ) -> SimilarItems:
        return engine.similar(item_id, n, request_id=request.state.request_id, method=method)

    # -- users ----------------------------------------------------------------------------

    @app.put("/v1/users/{user_id}", response_model=UserView, tags=["users"])
    def put_user(
        user_id: UserId, engine: EngineDep, fields: Annotated[UserFields, Body()]
    ) -> UserView:
        engine.upsert_user(User(user_id=ids.user(user_id), **fields.model_dump()))
        return engine.get_user(ids.user(user_id)).model_copy(update={"user_id": user_id})

    @app.get("/v1/users/{user_id}", response_model=UserView, tags=["users"])
    async def get_user(
        user_id: UserId, engine: EngineDep, recent: Annotated[int, Query(ge=0, le=1000)] = 50
    ) -> UserView:
        return engine.get_user(ids.user(user_id), recent=recent).model_copy(update={"user_id": user_id})

    @app.delete("/v1/users/{user_id}", response_model=Forgotten, tags=["users"])
    def forget_user(user_id: UserId, engine: EngineDep) -> Forgotten:
        """Forget the user: their events, profile and online state, everywhere."""
        return Forgotten(user_id=user_id, events_deleted=engine.forget_user(ids.user(user_id)))

    # -- recommendations ------------------------------------------------------------------

    @app.get("/v1/recommendations/{user_id}", response_model=Recommendations, tags=["recommend"])
    async def recommendations(
        request: Request,
        user_id: UserId,
        engine: EngineDep,
        n: Annotated[int, Query(ge=1, le=max_n)] = 10,
        category: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
        exclude_seen: bool = True,
        diversity: Annotated[float, Query(
            ge=0, le=1, description="0: by relevance; towards 1: maximal-marginal-relevance re-ranking "
                                    "on text embeddings")] = 0.0,
        explain: Annotated[bool, Query(description="Reasons written by the language model where it has "
                                                   "written a grounded one already (never waited for); "
                                                   "the template reason otherwise.")] = False,
    ) -> Recommendations:
        shown, user_id = user_id, ids.user(user_id)
        assignment = experiments.assignment(user_id)
        options: dict[str, Any] = {"diversity": diversity,
                                   **assignment.recommend_options(engine.settings.source_weights)}
        result = engine.recommend(user_id, n, category=category, exclude_seen=exclude_seen,
                                  request_id=request.state.request_id, **options)
        if assignment.experiment is not None and assignment.arm is not None:
            result.experiment, result.arm = assignment.experiment, assignment.arm
            experiments.record_exposure(result.request_id, assignment.experiment, assignment.arm, user_id,
                                        len(result.items))
        if explain and llm_service is not None:
            written = llm_service.explanations(user_id, [item.item_id for item in result.items])
            for item in result.items:
                item.reason = written.get(item.item_id, item.reason)
        result.user_id = shown
        return result

    @app.get("/v1/search", response_model=SearchResults, tags=["recommend"])
    def search(
        request: Request,
        engine: EngineDep,
        q: Annotated[str, Query(min_length=1, max_length=1000, description="What to look for, in words.")],
        n: Annotated[int, Query(ge=1, le=max_n)] = 10,
        user_id: Annotated[str | None, Query(min_length=1, max_length=256,
                                             description="Personalise toward this user's profile.")] = None,
    ) -> SearchResults:
        """Semantic search over the catalogue with the language model."""
        found = engine.search(q, n, user_id=ids.user(user_id) if user_id is not None else None,
                              request_id=request.state.request_id)
        found.user_id = user_id
        return found

    # -- models ---------------------------------------------------------------------------

    @app.get("/v1/models", tags=["models"], response_model=ModelsStatus)
    def get_models() -> dict[str, Any]:
        """The model serving now (`model_version` as in every response), the background
        training job if any (state, latest epoch, log tail), the registry's versions, and
        the language model (backend, state, queue depth, event -> list latency)."""
        return {**manager.status(), "language_model": llm_service.status() if llm_service is not None
                else {"backend": "off"}}

    @app.post("/v1/models/train", tags=["models"], status_code=202, response_model=TrainingStarted)
    def train_model(request: TrainRequest | None = None) -> Any:
        """Train the sequential model in a background process on the event log; the
        engine swaps to the new version when it is published. 409 while one runs."""
        overrides = request.config if request else {}
        try:
            check_overrides(overrides)
        except ValueError as error:
            return JSONResponse(error_body("validation_error", f"config: {error}",
                                           [{"field": "config", "message": str(error)}]), status_code=422)
        try:
            job = manager.train("requested", overrides or None)
        except TrainingInProgress as error:
            return JSONResponse(error_body("training_in_progress", str(error)), status_code=409)
        return {"training": job.to_json()}

    @app.post("/v1/models/activate", tags=["models"], response_model=ModelsStatus)
    def activate_model(request: ActivateRequest, engine: EngineDep) -> dict[str, Any]:
        """Serve another version of the registry (a rollback); the swap is atomic."""
        try:
            engine.model_registry().activate(request.version)
        except FileNotFoundError:
            raise NotFound("model", request.version) from None
        engine.load_current_model()
        return manager.status()

    # -- push (api/push.py) ---------------------------------------------------------------

    app.include_router(push_router(max_n, ids))
    app.include_router(experiments_router())
    mount_dashboard(app, settings.reports_dir)

    # -- operations -----------------------------------------------------------------------

    @app.get("/healthz", tags=["operations"], response_model=Health)
    async def healthz(engine: EngineDep) -> dict[str, Any]:
        """Counts of what this process serves, and where it stands: its process id, whether
        it leads (trains, decides push) and its position in the log."""
        return {"status": "ok", **engine.stats(), "process": os.getpid(), "leader": lease.held,
                "log_position": engine.follower.events_at}

    @app.get("/metrics", tags=["operations"])
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


__all__ = ["create_app"]
