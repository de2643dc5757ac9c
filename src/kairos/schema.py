"""The vocabulary of Kairos: events, items, users and recommendations.

These pydantic models are the validation edge: the HTTP API, the importers and
the Python API all build them, so a bad value is rejected with the same message
everywhere, before anything is stored.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

MAX_ID_LENGTH = 256
MAX_TEXT_BYTES = 32 * 1024
MAX_CONTEXT_BYTES = 16 * 1024
MAX_BATCH_EVENTS = 10_000
MAX_BATCH_ITEMS = 10_000
# Epoch seconds above this are almost surely milliseconds (it is the year 5138).
MAX_EPOCH_SECONDS = 1e11


class EventType(StrEnum):
    impression = "impression"
    view = "view"
    click = "click"
    like = "like"
    cart = "cart"
    share = "share"
    purchase = "purchase"
    rating = "rating"
    dislike = "dislike"
    skip = "skip"
    # What a user did with a notification (POST /v1/notifications/{id}/feedback records them).
    push_open = "push_open"
    push_click = "push_click"  # counts as a click on the item
    push_dismiss = "push_dismiss"


# Events that are exposures or rejections, not visits: they never join
# co-visitation pairs and never mark an item as seen.
NON_VISIT_TYPES = frozenset({EventType.impression, EventType.dislike, EventType.skip,
                             EventType.push_open, EventType.push_dismiss})


def _check_id(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"must be at most {MAX_ID_LENGTH} characters, got {len(value)}")
    if not value.isprintable():
        raise ValueError("must be printable text (no control characters or line breaks)")
    if value in (".", ".."):
        # URL dot-segments: clients and proxies collapse /v1/items/.. before it arrives.
        raise ValueError("must not be '.' or '..' (an id a URL cannot address)")
    return value


def _check_text(value: str) -> str:
    size = len(value.encode("utf-8"))
    if size > MAX_TEXT_BYTES:
        raise ValueError(f"must be at most {MAX_TEXT_BYTES} bytes of UTF-8, got {size}")
    return value


def parse_timestamp(value: Any) -> float:
    """Epoch seconds (int, float or numeric string) or ISO 8601 -> epoch seconds."""
    if isinstance(value, bool):
        raise ValueError("must be epoch seconds or an ISO 8601 string, not a boolean")
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, (int, float)):
        seconds = float(value)
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError("must be a finite, non-negative number of epoch seconds")
        if seconds > MAX_EPOCH_SECONDS:
            raise ValueError("is too large for epoch seconds (milliseconds? divide by 1000)")
        return seconds
    elif isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is not None:
            return parse_timestamp(number)
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("must be epoch seconds or an ISO 8601 string") from None
    else:
        raise ValueError("must be epoch seconds or an ISO 8601 string")
    if moment.tzinfo is None:  # naive times are read as UTC, as documented
        moment = moment.replace(tzinfo=UTC)
    return parse_timestamp(moment.timestamp())


EntityId = Annotated[str, AfterValidator(_check_id)]
Text = Annotated[str, AfterValidator(_check_text)]
Timestamp = Annotated[float, BeforeValidator(parse_timestamp)]


class Event(BaseModel):
    """One thing a user did to an item."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: EntityId
    item_id: EntityId
    type: EventType
    timestamp: Timestamp | None = Field(
        default=None, description="Epoch seconds or ISO 8601; the server's clock when omitted."
    )
    value: float | None = Field(
        default=None, validate_default=True, description="Required for `rating` (0.5-5)."
    )
    context: dict[str, Any] | None = None
    request_id: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$",
        description="The recommendation response this event answers (its request_id): attribution "
                    "for experiments. Stored in the event's context.")

    @field_validator("context")
    @classmethod
    def _check_context(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return value
        try:
            size = len(json.dumps(value, allow_nan=False, separators=(",", ":")).encode("utf-8"))
        except ValueError:
            raise ValueError("must hold finite numbers only (no NaN or Infinity)") from None
        except RecursionError:
            raise ValueError("is nested too deeply") from None
        if size > MAX_CONTEXT_BYTES:
            raise ValueError(f"must be at most {MAX_CONTEXT_BYTES} bytes as JSON, got {size}")
        return value

    @field_validator("value")
    @classmethod
    def _check_value(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        if info.data.get("type") == EventType.rating:
            if value is None:
                raise ValueError("is required for a rating event")
            if not 0.5 <= value <= 5.0:
                raise ValueError(f"of a rating must be within 0.5-5, got {value}")
        return value


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[Event] = Field(min_length=1, max_length=MAX_BATCH_EVENTS)


class ItemFields(BaseModel):
    """An item as a client sends it (the id comes from the URL or the batch row)."""

    model_config = ConfigDict(extra="forbid")

    title: Text = ""
    text: Text = Field(default="", description="Description: free text about the item.")
    categories: list[Annotated[str, AfterValidator(_check_id)]] = Field(
        default_factory=list, max_length=100
    )
    attributes: dict[str, Any] = Field(default_factory=dict)
    created_at: Timestamp | None = None
    available: bool = True


class Item(ItemFields):
    item_id: EntityId


class ItemBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[Item] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)


class UserFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attributes: dict[str, Any] = Field(default_factory=dict)
    text: Text = Field(default="", description="Stated interests, free text.")


class User(UserFields):
    user_id: EntityId


class SequenceEntry(BaseModel):
    item_id: str
    type: EventType
    timestamp: float
    value: float | None = None


class UserView(User):
    """A user as the API shows it: profile plus recent online sequence."""

    known: bool = Field(description="True once the user was upserted or sent an event.")
    event_count: int
    recent: list[SequenceEntry]


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    sources: list[str] = Field(description="Sources that proposed the item, strongest first.")
    title: str = ""
    reason: str = Field(default="", description="Why, in words, from the strongest source.")


class Recommendations(BaseModel):
    user_id: str
    items: list[RecommendedItem]
    model_version: str
    request_id: str
    sources: list[str] = Field(default_factory=list, description="Sources consulted for this request.")
    experiment: str | None = Field(default=None, description="The running experiment this request is in.")
    arm: str | None = Field(default=None, description="The user's arm of that experiment.")


class SearchResults(BaseModel):
    query: str
    user_id: str | None = None
    items: list[RecommendedItem]
    model_version: str
    request_id: str


class SimilarItems(BaseModel):
    item_id: str
    items: list[RecommendedItem]
    model_version: str
    request_id: str


class Health(BaseModel):
    """GET /healthz: what this process serves and where it stands."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    status: Literal["ok"]
    items: int
    available_items: int
    users: int
    events: int
    rebuild_seconds: float
    started_from: str | None = None
    model_version: str
    process: int
    leader: bool
    log_position: int


class Accepted(BaseModel):
    accepted: int


class ItemOut(BaseModel):
    item_id: str
    title: str
    text: str
    categories: list[str]
    attributes: dict[str, Any]
    created_at: float
    available: bool


class ItemsUpserted(BaseModel):
    upserted: int


class Forgotten(BaseModel):
    user_id: str
    events_deleted: int


class TrainRequest(BaseModel):
    """Optional SeqRecConfig fields over the preset, e.g. {"config": {"width": 128}}."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] = {}


class ActivateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
