"""Push endpoints: preferences, channels, campaigns, the inbox, feedback, live streams, stats."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sse_starlette.sse import EventSourceResponse

from kairos.api.errors import error_body
from kairos.api.paths import PathId, UserId
from kairos.engine import Engine, FeatureDisabled, NotFound
from kairos.pseudonyms import Pseudonyms
from kairos.push.schema import (
    Campaign,
    CampaignRequest,
    ChannelsOut,
    EffectivePreferences,
    Feedback,
    Notification,
    NotificationList,
    PreviewEntry,
    PushPreferences,
    PushStats,
    Status,
    WebhookConfig,
)
from kairos.push.service import NotDelivered, PushService

CAMPAIGN_WAIT_S = 10.0  # how long POST /v1/push/campaigns waits for the audience to be decided
STREAM_PING_S = 15


def get_push(request: Request) -> PushService:
    push: PushService | None = request.app.state.push
    if push is None:
        raise FeatureDisabled("push is off on this server (KAIROS_PUSH_ENABLED=false)")
    return push


def get_engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


PushDep = Annotated[PushService, Depends(get_push)]
EngineDep = Annotated[Engine, Depends(get_engine)]


def push_router(max_n: int, ids: Pseudonyms) -> APIRouter:
    """`ids`: the user ids kept (kairos.pseudonyms); answers carry the caller's own."""
    router = APIRouter()

    # -- preferences ----------------------------------------------------------------------

    @router.put("/v1/users/{user_id}/push", response_model=EffectivePreferences, tags=["push"])
    def put_preferences(user_id: UserId, push: PushDep,
                        preferences: Annotated[PushPreferences, Body()]) -> EffectivePreferences:
        """Consent and limits: opt_out, channels, per-type switches, timezone (IANA), quiet
        hours (local HH:MM), max_per_day. Fields left out follow the service's defaults."""
        return push.set_preferences(ids.user(user_id), preferences).model_copy(update={"user_id": user_id})

    @router.get("/v1/users/{user_id}/push", response_model=EffectivePreferences, tags=["push"])
    def get_preferences(user_id: UserId, push: PushDep) -> EffectivePreferences:
        """The preferences the policy applies (the user's own over the defaults)."""
        return push.get_preferences(ids.user(user_id)).model_copy(update={"user_id": user_id})

    # -- channels -------------------------------------------------------------------------

    @router.put("/v1/push/channels/webhook", response_model=ChannelsOut, tags=["push"])
    def put_webhook(config: WebhookConfig, push: PushDep) -> ChannelsOut:
        """Where webhook notifications are POSTed, and the HMAC secret that signs them."""
        push.set_webhook(config)
        return _channels(push)

    @router.delete("/v1/push/channels/webhook", response_model=ChannelsOut, tags=["push"])
    def delete_webhook(push: PushDep) -> ChannelsOut:
        push.set_webhook(None)
        return _channels(push)

    @router.get("/v1/push/channels", response_model=ChannelsOut, tags=["push"])
    def get_channels(push: PushDep) -> ChannelsOut:
        """The channels and their settings (the webhook secret is never shown)."""
        return _channels(push)

    # -- campaigns ------------------------------------------------------------------------

    @router.post("/v1/push/campaigns", response_model=Campaign, status_code=201, tags=["push"],
                 responses={200: {"model": Campaign, "description": "A campaign with this id exists: unchanged."}})
    async def post_campaign(request: CampaignRequest, push: PushDep) -> Any:
        """Notify about an item (or the best of several items for each user): Kairos ranks the
        audience itself (`max_users`, `min_p`) or takes `user_ids` and applies only the
        policy. Answers once the audience is decided (or after 10 s with state `pending`);
        201 when new, 200 with the existing campaign when the id was posted before. With
        pseudonymised ids the stored campaign (and so this answer) names its audience by
        pseudonym."""
        if ids.active and request.audience is not None and request.audience.user_ids is not None:
            audience = request.audience.model_copy(update={"user_ids": ids.users(request.audience.user_ids)})
            request = request.model_copy(update={"audience": audience})
        missing = await run_in_threadpool(lambda: [i for i in request.items() if push.view.item(i) is None])
        if missing:
            message = f"item {missing[0]!r} not found"
            return JSONResponse(error_body("validation_error", f"item_id: {message}",
                                           [{"field": "item_id", "message": message}]), status_code=422)
        campaign, created = await run_in_threadpool(push.create_campaign, request)
        deadline = asyncio.get_running_loop().time() + CAMPAIGN_WAIT_S
        while created and campaign.state == "pending" and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
            campaign = await run_in_threadpool(push.campaign, campaign.id) or campaign
        return JSONResponse(campaign.model_dump(mode="json"), status_code=201 if created else 200)

    @router.get("/v1/push/campaigns", response_model=list[Campaign], tags=["push"])
    def list_campaigns(push: PushDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[Campaign]:
        return push.campaigns(limit)

    @router.get("/v1/push/campaigns/{campaign_id}", response_model=Campaign, tags=["push"])
    def get_campaign(campaign_id: PathId, push: PushDep) -> Campaign:
        """Counts by status and by suppression reason, opens and clicks."""
        campaign = push.campaign(campaign_id)
        if campaign is None:
            raise NotFound("campaign", campaign_id)
        return campaign

    @router.get("/v1/push/preview", response_model=list[PreviewEntry], tags=["push"])
    def preview(push: PushDep, item_id: Annotated[str, Query(min_length=1, max_length=256)],
                n: Annotated[int, Query(ge=1, le=max_n)] = 20) -> list[PreviewEntry]:
        """Who a notification about the item would reach, with p, reason and the policy's
        verdict. Nothing is written or sent."""
        if push.view.item(item_id) is None:
            raise NotFound("item", item_id)
        return push.preview(item_id, n)

    @router.get("/v1/push/stats", tags=["push"], response_model=PushStats)
    def stats(push: PushDep) -> dict[str, Any]:
        """Counts by status, type, channel and suppression reason; delivery and decision
        latency; open and click rates; the calibration in use."""
        return push.stats()

    # -- the inbox, feedback --------------------------------------------------------------

    @router.get("/v1/users/{user_id}/notifications", response_model=NotificationList, tags=["push"])
    def inbox(user_id: UserId, push: PushDep,
              status: Annotated[Status | Literal["all"], Query(
                  description="delivered (the in-app list, default), another status, or all")] = Status.delivered,
              limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> NotificationList:
        """The user's notifications, newest first."""
        chosen = None if status == "all" else str(status)
        notifications = [n.model_copy(update={"user_id": user_id})
                         for n in push.notifications(ids.user(user_id), chosen, limit)]
        return NotificationList(user_id=user_id, notifications=notifications)

    @router.post("/v1/notifications/{notification_id}/feedback", response_model=Notification, tags=["push"])
    def feedback(notification_id: PathId, body: Feedback,
                 push: PushDep) -> Any:
        """opened, clicked or dismissed: stamped on the notification and recorded as an event
        (push_open, push_click, push_dismiss) so the models learn from it. Repeating an
        action changes nothing."""
        try:
            notification = push.feedback(notification_id, body.action)
        except NotDelivered as error:
            return JSONResponse(error_body("not_delivered", str(error)), status_code=409)
        if notification is None:
            raise NotFound("notification", notification_id)
        return notification

    # -- live streams ---------------------------------------------------------------------

    @router.get("/v1/users/{user_id}/notifications/stream", tags=["push"])
    async def notification_stream(user_id: UserId, push: PushDep) -> EventSourceResponse:
        """Server-sent events: each notification to this user the moment it is delivered
        (event `notification`, data: the notification as JSON)."""
        kept = ids.user(user_id)
        queue = push.hub.subscribe("notifications", kept)

        async def events() -> AsyncIterator[dict[str, Any]]:
            try:
                yield {"event": "ready", "data": json.dumps({"user_id": user_id})}
                while True:
                    message = {**await queue.get(), "user_id": user_id}
                    yield {"event": "notification", "id": message["notification_id"], "data": json.dumps(message)}
            finally:
                push.hub.unsubscribe("notifications", kept, queue)

        return EventSourceResponse(events(), ping=STREAM_PING_S)

    @router.get("/v1/recommendations/{user_id}/stream", tags=["recommend"])
    async def recommendation_stream(user_id: UserId, engine: EngineDep, push: PushDep,
                                    n: Annotated[int, Query(ge=1, le=max_n)] = 10) -> EventSourceResponse:
        """Server-sent events: the user's list now (event `recommendations`, the body of GET
        /v1/recommendations/{user}), then again each time their events change it."""
        kept = ids.user(user_id)
        queue = push.hub.subscribe("lists", kept)

        async def events() -> AsyncIterator[dict[str, Any]]:
            shown: list[str] | None = None
            try:
                while True:
                    result = await run_in_threadpool(engine.recommend, kept, n)
                    result.user_id = user_id
                    items = [item.item_id for item in result.items]
                    if items != shown:
                        shown = items
                        yield {"event": "recommendations", "id": result.request_id,
                               "data": result.model_dump_json()}
                    await queue.get()
                    while not queue.empty():  # a burst of events: one new list
                        queue.get_nowait()
            finally:
                push.hub.unsubscribe("lists", kept, queue)

        return EventSourceResponse(events(), ping=STREAM_PING_S)

    return router


def _channels(push: PushService) -> ChannelsOut:
    webhook = push.webhook()
    settings = push.settings
    return ChannelsOut(
        webhook=None if webhook is None else {"url": webhook.url, "secret": "***", "timeout_s": webhook.timeout_s,
                                              "max_attempts": webhook.max_attempts},
        email=None if not settings.push_smtp_host else {"host": settings.push_smtp_host,
                                                        "port": settings.push_smtp_port,
                                                        "from": settings.push_smtp_from},
        inbox={"enabled": True},
    )
