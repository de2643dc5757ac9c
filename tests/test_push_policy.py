"""The push policy, rule by rule, on a fake clock: every "no" names its reason."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from kairos.config import DAY, Settings
from kairos.push.policy import Budget, Candidate, Past, Policy, best_hour, ignored_streak, next_at_hour, quiet_until
from kairos.push.preferences import effective_preferences
from kairos.push.schema import EffectivePreferences, PushPreferences, QuietHours

BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str, zone: ZoneInfo = BERLIN) -> float:
    """'2025-06-15 14:00' in a zone -> epoch seconds."""
    return datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


def preferences(**fields: object) -> EffectivePreferences:
    own = PushPreferences.model_validate(fields) if fields else None
    return effective_preferences(Settings(push_default_timezone="Europe/Berlin"), "u1", own)


def candidate(now: float, **fields: object) -> Candidate:
    values: dict[str, object] = {"user_id": "u1", "item_id": "i1", "type": "item_created", "p": 0.5, "min_p": 0.1,
                                 "want_at": now, "expires_at": now + 2 * DAY}
    values.update(fields)
    return Candidate(**values)  # type: ignore[arg-type]


def budget(per_hour: int = 1000, campaign_left: int | None = None, used: int = 0) -> Budget:
    return Budget(per_hour, lambda hour: used, campaign_left)


def inbox(names: list[str]) -> str | None:
    return "inbox" if "inbox" in names else None


@pytest.fixture
def policy() -> Policy:
    return Policy(Settings(push_default_timezone="Europe/Berlin", push_min_gap_s=3600, push_max_per_day=3,
                           push_max_per_week=5, push_max_per_type_per_day=2, push_fatigue_after=3,
                           push_fatigue_p_step=0.1))


NOON = at("2025-06-16 12:00")  # a Monday, 12:00 in Berlin


def test_a_plain_notification_is_scheduled_now(policy: Policy) -> None:
    decision = policy.decide(candidate(NOON), preferences(), [], NOON, inbox, budget())
    assert (decision.status, decision.due_at, decision.channel) == ("scheduled", NOON, "inbox")


@pytest.mark.parametrize(("fields", "reason"), [
    ({"opt_out": True}, "opt_out"),
    ({"types": {"item_created": False}}, "type_off"),
    ({"channels": ["webhook"]}, "no_channel"),
])
def test_consent(policy: Policy, fields: dict[str, object], reason: str) -> None:
    decision = policy.decide(candidate(NOON), preferences(**fields), [], NOON, inbox, budget())
    assert (decision.status, decision.reason) == ("suppressed", reason)


def test_below_min_p_is_suppressed(policy: Policy) -> None:
    decision = policy.decide(candidate(NOON, p=0.05), preferences(), [], NOON, inbox, budget())
    assert (decision.status, decision.reason) == ("suppressed", "low_p")


def test_fatigue_raises_the_threshold_after_k_ignored(policy: Policy) -> None:
    ignored = [Past(NOON - k * DAY, "item_created", f"old{k}", "delivered", delivered_at=NOON - k * DAY)
               for k in range(2, 5)]  # three delivered, none opened, all older than a day
    assert ignored_streak(ignored, NOON, DAY) == 3
    assert policy.required_p(0.1, ignored, NOON) == pytest.approx(0.2)
    decision = policy.decide(candidate(NOON, p=0.15), preferences(), ignored, NOON, inbox, budget())
    assert (decision.status, decision.reason) == ("suppressed", "fatigue")
    assert policy.decide(candidate(NOON, p=0.25), preferences(), ignored, NOON, inbox, budget()).status == "scheduled"
    # One opened notification, newer than the ignored ones, ends the streak.
    opened = [*ignored, Past(NOON - 1.5 * DAY, "digest", "x", "delivered", delivered_at=NOON - 1.5 * DAY,
                             opened_at=NOON - 1.4 * DAY)]
    assert ignored_streak(opened, NOON, DAY) == 0
    # A dismissal counts as ignored at once; a delivery from an hour ago is too recent to tell.
    dismissed = [Past(NOON - 3600, "digest", "y", "delivered", delivered_at=NOON - 3600, dismissed_at=NOON - 3000)]
    fresh = [Past(NOON - 3600, "digest", "y", "delivered", delivered_at=NOON - 3600)]
    assert ignored_streak(dismissed, NOON, DAY) == 1 and ignored_streak(fresh, NOON, DAY) == 0


def test_never_the_same_item_twice_within_30_days(policy: Policy) -> None:
    past = [Past(NOON - 29 * DAY, "campaign", "i1", "delivered", delivered_at=NOON - 29 * DAY, opened_at=NOON)]
    decision = policy.decide(candidate(NOON), preferences(), past, NOON, inbox, budget())
    assert (decision.status, decision.reason) == ("suppressed", "same_item")
    older = [Past(NOON - 31 * DAY, "campaign", "i1", "delivered", delivered_at=NOON - 31 * DAY, opened_at=NOON)]
    assert policy.decide(candidate(NOON), preferences(), older, NOON, inbox, budget()).status == "scheduled"
    # A notification that was never sent does not count.
    never = [Past(NOON - DAY, "campaign", "i1", "suppressed")]
    assert policy.decide(candidate(NOON), preferences(), never, NOON, inbox, budget()).status == "scheduled"


def test_quiet_hours_defer_to_their_end_in_the_users_zone(policy: Policy) -> None:
    late = at("2025-06-16 23:30")
    decision = policy.decide(candidate(late), preferences(), [], late, inbox, budget())
    assert decision.status == "scheduled" and decision.reason == "quiet_hours"
    assert decision.due_at == at("2025-06-17 08:00")
    # The same instant is 17:30 in New York: not quiet there.
    ny = preferences(timezone="America/New_York")
    assert policy.decide(candidate(late), ny, [], late, inbox, budget()).due_at == late
    early = at("2025-06-16 06:59")
    assert quiet_until(early, preferences()) == at("2025-06-16 08:00")
    assert quiet_until(at("2025-06-16 08:00"), preferences()) is None
    day_window = preferences(quiet_hours={"start": "13:00", "end": "15:00"})
    assert quiet_until(at("2025-06-16 14:00"), day_window) == at("2025-06-16 15:00")
    assert quiet_until(at("2025-06-16 23:00"), preferences(quiet_hours={"start": "00:00", "end": "00:00"})) is None


def test_a_deferral_past_the_expiry_expires(policy: Policy) -> None:
    late = at("2025-06-16 23:30")
    decision = policy.decide(candidate(late, expires_at=late + 3600), preferences(), [], late, inbox, budget())
    assert (decision.status, decision.reason) == ("expired", "quiet_hours")


def test_min_gap_defers_after_the_last_one(policy: Policy) -> None:
    past = [Past(NOON - 600, "campaign", "other", "delivered", delivered_at=NOON - 600)]
    decision = policy.decide(candidate(NOON), preferences(), past, NOON, inbox, budget())
    assert (decision.status, decision.due_at, decision.reason) == ("scheduled", NOON - 600 + 3600, "min_gap")
    # A deferral into quiet hours is deferred again, to their end.
    evening = at("2025-06-16 21:30")
    past = [Past(evening, "campaign", "other", "scheduled")]
    decision = policy.decide(candidate(evening), preferences(), past, evening, inbox, budget())
    assert decision.due_at == at("2025-06-17 08:00")


def test_daily_cap_counts_the_users_local_day(policy: Policy) -> None:
    morning = [Past(at(f"2025-06-16 0{h}:00"), "campaign", f"x{h}", "delivered", delivered_at=at(f"2025-06-16 0{h}:00"),
                    opened_at=NOON) for h in (8, 9)]
    third = policy.decide(candidate(NOON), preferences(), morning, NOON, inbox, budget())
    assert third.status == "scheduled"
    full = [*morning, Past(at("2025-06-16 10:00"), "digest", "x10", "delivered", delivered_at=at("2025-06-16 10:00"),
                           opened_at=NOON)]
    decision = policy.decide(candidate(NOON), preferences(), full, NOON, inbox, budget())
    assert (decision.status, decision.reason) == ("suppressed", "daily_cap")
    assert policy.decide(candidate(NOON), preferences(max_per_day=5), full, NOON, inbox, budget()).status == "scheduled"
    # Yesterday's (Berlin) notifications do not count today, even if the same UTC date.
    yesterday = [Past(at("2025-06-15 23:30"), "campaign", f"y{k}", "delivered", delivered_at=NOON, opened_at=NOON)
                 for k in range(3)]
    assert policy.decide(candidate(NOON), preferences(), yesterday, NOON, inbox, budget()).status == "scheduled"


def test_per_type_cap(policy: Policy) -> None:
    two = [Past(at(f"2025-06-16 0{h}:00"), "item_created", f"x{h}", "delivered", delivered_at=NOON, opened_at=NOON)
           for h in (8, 9)]
    decision = policy.decide(candidate(NOON), preferences(max_per_day=10), two, NOON, inbox, budget())
    assert (decision.status, decision.reason) == ("suppressed", "type_cap")
    assert policy.decide(candidate(NOON, type="digest"), preferences(max_per_day=10), two, NOON, inbox,
                         budget()).status == "scheduled"


def test_weekly_cap_over_any_seven_days(policy: Policy) -> None:
    week = [Past(NOON - k * DAY, "campaign", f"w{k}", "delivered", delivered_at=NOON - k * DAY, opened_at=NOON)
            for k in range(1, 6)]
    decision = policy.decide(candidate(NOON), preferences(), week, NOON, inbox, budget())
    assert (decision.status, decision.reason) == ("suppressed", "weekly_cap")
    later = [Past(NOON - k * DAY, "campaign", f"w{k}", "delivered", delivered_at=NOON, opened_at=NOON)
             for k in range(3, 8)]  # two of them fall out of the week ending now
    assert policy.decide(candidate(NOON), preferences(), later, NOON, inbox, budget()).status == "scheduled"


def test_campaign_and_hourly_budgets(policy: Policy) -> None:
    spent = budget(campaign_left=1)
    assert policy.decide(candidate(NOON), preferences(), [], NOON, inbox, spent).status == "scheduled"
    decision = policy.decide(candidate(NOON, user_id="u2"), preferences(), [], NOON, inbox, spent)
    assert (decision.status, decision.reason) == ("suppressed", "campaign_budget")
    full_hour = budget(per_hour=10, used=10)
    decision = policy.decide(candidate(NOON), preferences(), [], NOON, inbox, full_hour)
    assert (decision.status, decision.reason) == ("suppressed", "hourly_budget")


def test_send_time_optimisation_picks_the_most_active_local_hour() -> None:
    evenings = [at(f"2025-06-{d:02d} 20:15") for d in range(1, 10)]
    mornings = [at(f"2025-06-{d:02d} 07:10") for d in range(1, 4)]
    assert best_hour(evenings + mornings, "Europe/Berlin", 19) == 20
    assert best_hour(evenings + mornings, "UTC", 19) == 18
    assert best_hour([], "Europe/Berlin", 19) == 19
    assert next_at_hour(NOON, 20, "Europe/Berlin") == at("2025-06-16 20:00")
    assert next_at_hour(NOON, 9, "Europe/Berlin") == at("2025-06-17 09:00")
    assert next_at_hour(at("2025-06-16 20:40"), 20, "Europe/Berlin") == at("2025-06-16 20:40")
    # Across the autumn DST change the local hour holds.
    assert next_at_hour(at("2025-10-25 22:00"), 9, "Europe/Berlin") == at("2025-10-26 09:00")


def test_bad_preferences_are_refused_naming_the_field() -> None:
    from pydantic import ValidationError

    for bad, field in [({"timezone": "Mars/Base"}, "timezone"), ({"quiet_hours": {"start": "25:00", "end": "08:00"}},
                       "start"), ({"max_per_day": -1}, "max_per_day"), ({"channels": ["pigeon"]}, "channels"),
                       ({"types": {"spam": True}}, "types")]:
        with pytest.raises(ValidationError) as error:
            PushPreferences.model_validate(bad)
        assert field in str(error.value.errors()[0]["loc"])
    assert QuietHours(start="22:00", end="07:30").end == "07:30"


def test_utc_helper_is_consistent() -> None:
    assert at("2025-06-16 12:00", ZoneInfo("UTC")) == datetime(2025, 6, 16, 12, tzinfo=timezone.utc).timestamp()
