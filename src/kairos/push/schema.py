"""Push's vocabulary at the API edge: preferences, campaigns, channels, notifications.

As in kairos.schema, these pydantic models are where bad input stops: an unknown
time zone, quiet hours at "25:00", a webhook URL that is not http(s) or a negative
cap is a 422 naming the field, and nothing is stored.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from kairos.schema import EntityId, Text, Timestamp


class NotificationType(StrEnum):
    item_created = "item_created"
    back_in_stock = "back_in_stock"
    price_drop = "price_drop"
    cart_abandoned = "cart_abandoned"
    next_best = "next_best"
    digest = "digest"
    campaign = "campaign"


class Status(StrEnum):
    """scheduled -> sending -> delivered | failed | dead; or suppressed | expired.

    A retryable failure goes back to `scheduled` (later, attempts + 1); `failed` is a
    refusal that retrying cannot fix (4xx); `dead` ran out of attempts."""

    scheduled = "scheduled"
    sending = "sending"
    delivered = "delivered"
    failed = "failed"
    dead = "dead"
    suppressed = "suppressed"
    expired = "expired"


ChannelName = Literal["webhook", "inbox", "email"]
CHANNELS: tuple[str, ...] = ("webhook", "email", "inbox")
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}: use an IANA name such as 'Europe/Berlin'") from None
    return value


def check_clock(value: str) -> str:
    if not _CLOCK.match(value):
        raise ValueError(f"{value!r} is not a time of day HH:MM (00:00-23:59)")
    return value


def minutes_of(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


TimeZoneName = Annotated[str, AfterValidator(check_timezone)]
ClockTime = Annotated[str, AfterValidator(check_clock)]


class QuietHours(BaseModel):
    """Local times; a window may wrap midnight (22:00-08:00). Equal start and end: none."""

    model_config = ConfigDict(extra="forbid")

    start: ClockTime
    end: ClockTime


class PushPreferences(BaseModel):
    """A user's consent and limits (PUT /v1/users/{id}/push). A field left out (or null)
    takes the service's default, and follows it when the default changes."""

    model_config = ConfigDict(extra="forbid")

    opt_out: bool = False
    channels: list[ChannelName] | None = Field(
        default=None, max_length=3, description="Channels this user may be reached on, preferred first.")
    types: dict[NotificationType, bool] = Field(
        default_factory=dict, description="Per notification type: false switches it off for this user.")
    timezone: TimeZoneName | None = None
    quiet_hours: QuietHours | None = None
    max_per_day: int | None = Field(default=None, ge=0, le=1000)


class EffectivePreferences(BaseModel):
    """What the policy applies: the user's preferences over the service's defaults."""

    user_id: str
    opt_out: bool
    channels: list[str]
    types: dict[str, bool]
    timezone: str
    quiet_hours: QuietHours
    max_per_day: int
    customised: bool = Field(description="True when the user set preferences of their own.")


class WebhookConfig(BaseModel):
    """PUT /v1/push/channels/webhook."""

    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, AfterValidator(lambda url: _check_url(url))] = Field(max_length=2048)
    secret: str = Field(min_length=1, max_length=1024, description="Key of the X-Kairos-Signature HMAC.")
    timeout_s: float | None = Field(default=None, gt=0, le=60)
    max_attempts: int | None = Field(default=None, ge=1, le=50)


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http(s) URL, got {url!r}")
    return url


class Audience(BaseModel):
    """Who a campaign is for: Kairos picks the best `max_users` with p >= `min_p`, or
    `user_ids` names them (Kairos then only applies the policy)."""

    model_config = ConfigDict(extra="forbid")

    max_users: int | None = Field(default=None, ge=1, le=10_000_000)
    min_p: float | None = Field(default=None, ge=0, le=1)
    user_ids: list[EntityId] | None = Field(default=None, min_length=1, max_length=1_000_000)

    @model_validator(mode="after")
    def _one_rule(self) -> Audience:
        if self.user_ids is not None and (self.max_users is not None or self.min_p is not None):
            raise ValueError("give either user_ids or max_users/min_p, not both")
        return self


class CampaignRequest(BaseModel):
    """POST /v1/push/campaigns. With several items each user gets the one they are likeliest
    to engage with; an `id` makes the request idempotent."""

    model_config = ConfigDict(extra="forbid")

    id: EntityId | None = None
    item_id: EntityId | None = None
    item_ids: list[EntityId] | None = Field(default=None, min_length=1, max_length=100)
    audience: Audience = Field(default_factory=Audience)
    title: Text | None = Field(default=None, max_length=500, description="Default: the item's title.")
    body: Text | None = Field(default=None, max_length=4000)
    send_time: Literal["now", "optimal"] | Timestamp = Field(
        default="now", description="now, optimal (each user's most active hour) or a time.")
    expires_at: Timestamp | None = None
    budget: int | None = Field(default=None, ge=1, description="At most this many notifications in all.")

    @model_validator(mode="after")
    def _some_item(self) -> CampaignRequest:
        if (self.item_id is None) == (self.item_ids is None):
            raise ValueError("give item_id or item_ids (one of them)")
        return self

    def items(self) -> list[str]:
        return [self.item_id] if self.item_id is not None else list(dict.fromkeys(self.item_ids or []))


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["opened", "clicked", "dismissed"]


class Notification(BaseModel):
    notification_id: str
    user_id: str
    item_id: str
    items: list[str] = Field(default_factory=list, description="A digest's items (item_id is the first).")
    type: NotificationType
    channel: str | None
    title: str
    body: str
    reason: str
    p: float
    campaign_id: str | None = None
    status: Status
    suppressed_reason: str | None = None
    created_at: float
    due_at: float
    expires_at: float
    attempts: int = 0
    last_error: str | None = None
    delivered_at: float | None = None
    opened_at: float | None = None
    clicked_at: float | None = None
    dismissed_at: float | None = None


class NotificationList(BaseModel):
    user_id: str
    notifications: list[Notification]


class Campaign(BaseModel):
    id: str
    state: Literal["pending", "decided"]
    created_at: float
    decided_at: float | None = None
    request: dict[str, Any]
    counts: dict[str, int] = Field(default_factory=dict, description="Notifications by status.")
    suppressed: dict[str, int] = Field(default_factory=dict, description="Suppressions by reason.")
    opened: int = 0
    clicked: int = 0


class PreviewEntry(BaseModel):
    user_id: str
    p: float
    reason: str
    decision: str = Field(description="What the policy would do: scheduled, or the suppression reason.")
    due_at: float | None = None
    channel: str | None = None


class PushStats(BaseModel):
    """GET /v1/push/stats: what the outbox holds and how it went."""

    model_config = ConfigDict(extra="allow")

    by_status: dict[str, int]
    suppressed: dict[str, int] = Field(description="Notifications not sent, by reason (cap, quiet, consent...).")
    by_type: dict[str, int]
    by_channel: dict[str, int]
    opened: int
    clicked: int
    dismissed: int
    open_rate: float | None = None
    click_rate: float | None = None
    delivery_latency: dict[str, float | None] = Field(description="Seconds from due to delivered: "
                                                      "p50_s, p99_s, mean_s, n.")
    decision_latency: dict[str, dict[str, float]] = Field(description="Seconds from trigger to decision, "
                                                          "by trigger kind.")
    triggers: dict[str, dict[str, int]]
    skipped: dict[str, int]
    calibration: dict[str, Any]
    user_vectors: dict[str, int]
    webhook_configured: bool
    email_configured: bool


class ChannelsOut(BaseModel):
    webhook: dict[str, Any] | None
    email: dict[str, Any] | None
    inbox: dict[str, Any]
