"""The triggers' settings: defaults here, overrides from KAIROS_PUSH_TRIGGERS (JSON).

Each trigger can be switched off (`"enabled": false`); the other fields say how
many users it may reach, how sure Kairos must be (`min_p`) and how long its
notifications stay worth sending (`expires_s`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kairos.config import DAY

HOUR = 3600.0


class TriggerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_users: int = Field(default=1000, ge=0, description="Users one trigger may notify, best p first.")
    min_p: float = Field(default=0.0, ge=0, le=1, description="Least engagement probability to notify.")
    expires_s: float = Field(default=DAY, gt=0, description="A notification not sent by then is dropped.")


class ItemCreatedConfig(TriggerConfig):
    max_age_s: float = Field(default=2 * DAY, gt=0, description="Only items created this recently (an "
                             "import of an old catalogue notifies nobody).")
    max_items: int = Field(default=100, ge=1, description="New items arriving together (one upsert) are one "
                           "trigger: each user hears of the one that suits them best. More than this at once "
                           "is a catalogue load, and notifies nobody.")
    min_similarity: float | None = Field(
        default=None, ge=-1, le=1, description="Only users whose semantic profile is at least this close "
        "(cosine) to the item's text, so a small shop's tea drinkers do not hear of a new coffee grinder just "
        "because there is room; default: KAIROS_COLD_START_MIN_SIMILARITY, as for the cold-start place.")
    expires_s: float = 2 * DAY


class BackInStockConfig(TriggerConfig):
    max_users: int = 10_000
    lookback_s: float = Field(default=30 * DAY, gt=0, description="Who viewed or carted it this recently.")


class PriceDropConfig(BackInStockConfig):
    min_drop: float = Field(default=0.05, ge=0, lt=1, description="Least relative price drop that notifies.")
    price_attribute: str = "price"


class CartAbandonedConfig(TriggerConfig):
    after_s: float = Field(default=1800.0, gt=0, description="A cart without a purchase of the item this "
                           "long after is abandoned.")
    complement_min_p: float = Field(default=0.05, ge=0, le=1, description="Add the best complementary item "
                                    "to the reminder when its p reaches this.")


class NextBestConfig(TriggerConfig):
    min_p: float = 0.2
    session_gap_s: float = Field(default=1800.0, gt=0, description="A user with no event for this long has "
                                 "left the site: only then is a notification of any use.")
    expires_s: float = 6 * HOUR


class DigestConfig(TriggerConfig):
    n: int = Field(default=5, ge=1, le=50, description="Items in a digest.")
    active_days: float = Field(default=30.0, gt=0, description="Only users with an event this recently.")
    expires_s: float = 12 * HOUR


class CampaignConfig(TriggerConfig):
    expires_s: float = 3 * DAY


class Triggers(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_created: ItemCreatedConfig = ItemCreatedConfig()
    back_in_stock: BackInStockConfig = BackInStockConfig()
    price_drop: PriceDropConfig = PriceDropConfig()
    cart_abandoned: CartAbandonedConfig = CartAbandonedConfig()
    next_best: NextBestConfig = NextBestConfig()
    digest: DigestConfig = DigestConfig()
    campaign: CampaignConfig = CampaignConfig()

    def of(self, kind: str) -> TriggerConfig:
        config: TriggerConfig = getattr(self, kind)
        return config


def load_triggers(overrides: dict[str, dict[str, Any]]) -> Triggers:
    """Defaults with the overrides merged field by field; a bad name or value is a
    ValueError naming it (at start-up, not at the first notification)."""
    try:
        return Triggers.model_validate(overrides)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"KAIROS_PUSH_TRIGGERS: {where}: {first['msg']}") from None
