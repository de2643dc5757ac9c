"""Every endpoint once: what to send and how to read the answer, as a `Call`. The sync
and async clients only send calls; the shapes are the API's own pydantic models.

A call says whether it may be sent again after a failure that may have reached the
server (`retry_safe`): reads, PUTs and DELETEs may; event batches and campaigns carry
a key the server deduplicates on; starting training or an experiment may not.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, TypeAdapter

from kairos.experiments.schema import (
    Experiment,
    ExperimentList,
    ExperimentReport,
    ExperimentSpec,
)
from kairos.push.schema import (
    Campaign,
    CampaignRequest,
    ChannelsOut,
    EffectivePreferences,
    Notification,
    NotificationList,
    PreviewEntry,
    PushPreferences,
    PushStats,
    WebhookConfig,
)
from kairos.schema import (
    Accepted,
    Event,
    Forgotten,
    Health,
    Item,
    ItemFields,
    ItemOut,
    ItemsUpserted,
    Recommendations,
    SearchResults,
    SimilarItems,
    UserFields,
    UserView,
)
from kairos.training.status import ModelsStatus, TrainingStarted

T = TypeVar("T")
Body = BaseModel | Mapping[str, Any]


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any], T]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    retry_safe: bool = True


@cache
def _adapter(shape: Any) -> TypeAdapter[Any]:
    return TypeAdapter(shape)


def reads(shape: type[T] | Any) -> Callable[[Any], T]:
    """The answer's JSON as `shape` (a model, or e.g. list[Campaign])."""
    return _adapter(shape).validate_python  # type: ignore[no-any-return]


def body(value: Body) -> dict[str, Any]:
    """A model as the API reads it (unset fields left out), or a mapping as given."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    return dict(value)


def segment(value: str) -> str:
    """An id as one path segment: '/', '?', '%' and the rest escaped."""
    return quote(value, safe="")


def _query(**params: Any) -> dict[str, Any]:
    return {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in params.items() if v is not None}


# -- events, items, users --------------------------------------------------------------------

def events(batch: Iterable[Event | Mapping[str, Any]], key: str | None = None) -> Call[Accepted]:
    """One batch (≤ 10,000 events), stored once however often it is sent with its key."""
    return Call("POST", "/v1/events", reads(Accepted), json={"events": [body(e) for e in batch]},
                headers={"Idempotency-Key": key or str(uuid.uuid4())})


def put_item(item_id: str, fields: ItemFields | Mapping[str, Any]) -> Call[ItemOut]:
    return Call("PUT", f"/v1/items/{segment(item_id)}", reads(ItemOut), json=body(fields))


def put_items(items: Iterable[Item | Mapping[str, Any]]) -> Call[ItemsUpserted]:
    return Call("POST", "/v1/items", reads(ItemsUpserted), json={"items": [body(i) for i in items]})


def get_item(item_id: str) -> Call[ItemOut]:
    return Call("GET", f"/v1/items/{segment(item_id)}", reads(ItemOut))


def delete_item(item_id: str) -> Call[ItemOut]:
    """Mark the item unavailable: never recommended again, its history kept."""
    return Call("DELETE", f"/v1/items/{segment(item_id)}", reads(ItemOut))


def similar(item_id: str, n: int = 10,
            method: Literal["hybrid", "semantic", "covisit"] = "hybrid") -> Call[SimilarItems]:
    return Call("GET", f"/v1/items/{segment(item_id)}/similar", reads(SimilarItems), params=_query(n=n, method=method))


def put_user(user_id: str, fields: UserFields | Mapping[str, Any]) -> Call[UserView]:
    return Call("PUT", f"/v1/users/{segment(user_id)}", reads(UserView), json=body(fields))


def get_user(user_id: str, recent: int = 50) -> Call[UserView]:
    return Call("GET", f"/v1/users/{segment(user_id)}", reads(UserView), params=_query(recent=recent))


def forget_user(user_id: str) -> Call[Forgotten]:
    """Delete the user's events, profile and state everywhere."""
    return Call("DELETE", f"/v1/users/{segment(user_id)}", reads(Forgotten))


# -- recommendations, search -------------------------------------------------------------------

def recommendations(user_id: str, n: int = 10, category: str | None = None, exclude_seen: bool = True,
                    diversity: float = 0.0, explain: bool = False) -> Call[Recommendations]:
    return Call("GET", f"/v1/recommendations/{segment(user_id)}", reads(Recommendations),
                params=_query(n=n, category=category, exclude_seen=exclude_seen, diversity=diversity,
                              explain=explain))


def search(q: str, n: int = 10, user_id: str | None = None) -> Call[SearchResults]:
    return Call("GET", "/v1/search", reads(SearchResults), params=_query(q=q, n=n, user_id=user_id))


# -- models ------------------------------------------------------------------------------------

def models() -> Call[ModelsStatus]:
    return Call("GET", "/v1/models", reads(ModelsStatus))


def train(config: Mapping[str, Any] | None = None) -> Call[TrainingStarted]:
    """Start background training (Conflict while a run goes on)."""
    return Call("POST", "/v1/models/train", reads(TrainingStarted), json={"config": dict(config or {})},
                retry_safe=False)


def activate(version: str) -> Call[ModelsStatus]:
    """Serve another registry version (a rollback)."""
    return Call("POST", "/v1/models/activate", reads(ModelsStatus), json={"version": version})


# -- push --------------------------------------------------------------------------------------

def set_preferences(user_id: str, preferences: PushPreferences | Mapping[str, Any]) -> Call[EffectivePreferences]:
    return Call("PUT", f"/v1/users/{segment(user_id)}/push", reads(EffectivePreferences), json=body(preferences))


def get_preferences(user_id: str) -> Call[EffectivePreferences]:
    return Call("GET", f"/v1/users/{segment(user_id)}/push", reads(EffectivePreferences))


def set_webhook(config: WebhookConfig | Mapping[str, Any]) -> Call[ChannelsOut]:
    return Call("PUT", "/v1/push/channels/webhook", reads(ChannelsOut), json=body(config))


def delete_webhook() -> Call[ChannelsOut]:
    return Call("DELETE", "/v1/push/channels/webhook", reads(ChannelsOut))


def channels() -> Call[ChannelsOut]:
    return Call("GET", "/v1/push/channels", reads(ChannelsOut))


def create_campaign(campaign: CampaignRequest | Mapping[str, Any]) -> Call[Campaign]:
    """A campaign without an id gets one here, so a retry finds it rather than sending twice."""
    sent = body(campaign)
    sent.setdefault("id", f"campaign-{uuid.uuid4()}")
    return Call("POST", "/v1/push/campaigns", reads(Campaign), json=sent)


def campaigns(limit: int = 100) -> Call[list[Campaign]]:
    return Call("GET", "/v1/push/campaigns", reads(list[Campaign]), params=_query(limit=limit))


def campaign(campaign_id: str) -> Call[Campaign]:
    return Call("GET", f"/v1/push/campaigns/{segment(campaign_id)}", reads(Campaign))


def preview(item_id: str, n: int = 20) -> Call[list[PreviewEntry]]:
    """Who a notification about the item would reach; nothing is written or sent."""
    return Call("GET", "/v1/push/preview", reads(list[PreviewEntry]), params=_query(item_id=item_id, n=n))


def push_stats() -> Call[PushStats]:
    return Call("GET", "/v1/push/stats", reads(PushStats))


def notifications(user_id: str, status: str = "delivered", limit: int = 50) -> Call[NotificationList]:
    """The user's notifications, newest first (`status="all"` for every one)."""
    return Call("GET", f"/v1/users/{segment(user_id)}/notifications", reads(NotificationList),
                params=_query(status=status, limit=limit))


def feedback(notification_id: str, action: Literal["opened", "clicked", "dismissed"]) -> Call[Notification]:
    """Repeating an action changes nothing: safe to retry."""
    return Call("POST", f"/v1/notifications/{segment(notification_id)}/feedback", reads(Notification),
                json={"action": action})


# -- experiments -------------------------------------------------------------------------------

def create_experiment(spec: ExperimentSpec | Mapping[str, Any]) -> Call[Experiment]:
    return Call("POST", "/v1/experiments", reads(Experiment), json=body(spec), retry_safe=False)


def experiments() -> Call[ExperimentList]:
    return Call("GET", "/v1/experiments", reads(ExperimentList))


def experiment(experiment_id: str) -> Call[ExperimentReport]:
    return Call("GET", f"/v1/experiments/{segment(experiment_id)}", reads(ExperimentReport))


def stop_experiment(experiment_id: str, winner: str | None = None) -> Call[ExperimentReport]:
    return Call("POST", f"/v1/experiments/{segment(experiment_id)}/stop", reads(ExperimentReport),
                json={"winner": winner} if winner else None)


# -- operations --------------------------------------------------------------------------------

def health() -> Call[Health]:
    return Call("GET", "/healthz", reads(Health))


# -- live streams (server-sent events) -----------------------------------------------------------

def notification_stream(user_id: str) -> Call[Notification]:
    """Each notification to the user the moment it is delivered (event `notification`)."""
    return Call("GET", f"/v1/users/{segment(user_id)}/notifications/stream", reads(Notification))


def recommendation_stream(user_id: str, n: int = 10) -> Call[Recommendations]:
    """The user's list now, then each time their events change it (event `recommendations`)."""
    return Call("GET", f"/v1/recommendations/{segment(user_id)}/stream", reads(Recommendations),
                params=_query(n=n))


STREAM_EVENTS = {"notification", "recommendations"}  # the events a stream yields; `ready` etc. are not
