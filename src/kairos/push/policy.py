"""The rules every notification passes, whatever its trigger or channel.

In order: consent (opt-out, the type switched off, no channel that reaches the
user); how sure we must be (`min_p`, raised for a user who ignored their latest
notifications: fatigue); never the same item twice within 30 days; when (quiet
hours in the user's own zone and the minimum gap defer it, and it expires if that
is past `expires_at`); caps per local day, per 7 days and per type; the campaign's
and the hour's budgets. Each "no" names its reason, and the caller counts it.

Pure: time comes in as an argument, history as rows the caller read from the
outbox, so a test drives it with a fake clock and a replay with simulated time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np

from kairos.config import DAY, Settings
from kairos.push.schema import EffectivePreferences, minutes_of

WEEK = 7 * DAY
ACTIVE = frozenset({"scheduled", "sending", "delivered"})  # what counts against caps and gaps
MAX_DEFERRALS = 16


@dataclass(slots=True)
class Past:
    """A notification already in a user's history (any status)."""

    due_at: float
    type: str
    item_id: str
    status: str
    delivered_at: float | None = None
    opened_at: float | None = None
    clicked_at: float | None = None
    dismissed_at: float | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


@dataclass(slots=True)
class Candidate:
    user_id: str
    item_id: str
    type: str
    p: float
    min_p: float
    want_at: float  # the earliest time to send: now, a chosen time, or the user's best hour
    expires_at: float
    campaign_id: str | None = None


@dataclass(slots=True)
class Decision:
    status: str  # scheduled | suppressed | expired
    due_at: float
    reason: str | None = None  # why not, or what deferred it ("quiet_hours", "min_gap")
    channel: str | None = None


@dataclass
class Budget:
    """Global and per-campaign volume for one batch of decisions. `hour_count(h)` tells how
    many notifications are due in UTC hour h already (read from the outbox)."""

    per_hour: int
    hour_count: Callable[[int], int]
    campaign_left: int | None = None
    _hours: dict[int, int] = field(default_factory=dict)

    def take(self, due_at: float) -> str | None:
        """Count one notification due then; the reason if a budget is spent."""
        if self.campaign_left is not None and self.campaign_left <= 0:
            return "campaign_budget"
        hour = int(due_at // 3600)
        used = self._hours.get(hour)
        if used is None:
            used = self.hour_count(hour)
        if used >= self.per_hour:
            return "hourly_budget"
        self._hours[hour] = used + 1
        if self.campaign_left is not None:
            self.campaign_left -= 1
        return None


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local(t: float, tz: str) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc).astimezone(zone(tz))


def quiet_until(t: float, preferences: EffectivePreferences) -> float | None:
    """When the quiet hours that contain `t` end (epoch seconds), or None if `t` is not quiet."""
    start, end = minutes_of(preferences.quiet_hours.start), minutes_of(preferences.quiet_hours.end)
    if start == end:
        return None
    moment = local(t, preferences.timezone)
    minute = moment.hour * 60 + moment.minute
    quiet = start <= minute < end if start < end else (minute >= start or minute < end)
    if not quiet:
        return None
    day = moment.date() if minute < end else moment.date() + timedelta(days=1)
    wake = datetime(day.year, day.month, day.day, end // 60, end % 60, tzinfo=zone(preferences.timezone))
    return max(wake.timestamp(), t)


def next_at_hour(now: float, hour: int, tz: str) -> float:
    """The next moment at local `hour`:00 from `now` on (now itself within that hour)."""
    moment = local(now, tz)
    if moment.hour == hour:
        return now
    target = moment.replace(hour=hour, minute=0, second=0, microsecond=0)
    if target <= moment:
        target = (target + timedelta(days=1)).replace(hour=hour)  # wall time: DST-safe enough
    return target.timestamp()


HOUR_HALF_LIFE_S = 14 * DAY  # how fast old habits fade from a user's best hour


def hour_weights(timestamps: Sequence[float] | np.ndarray) -> np.ndarray:
    """(24,) the user's events per UTC hour of day, recent ones weighing more."""
    times = np.asarray(timestamps, dtype=np.float64)
    if not len(times):
        return np.zeros(24)
    hours = ((times // 3600) % 24).astype(np.int64)
    decay = np.exp(-(times.max() - times) * math.log(2) / HOUR_HALF_LIFE_S)
    return np.bincount(hours, weights=decay, minlength=24)


def best_local_hour(weights: np.ndarray, tz: str, default: int, now: float) -> int:
    """The local hour with the most weight (`hour_weights`, shifted by the zone's offset at
    `now`, to the hour); `default` without any."""
    if not float(weights.sum()) > 0:
        return default
    offset = local(now, tz).utcoffset()
    shift = round(offset.total_seconds() / 3600) if offset is not None else 0
    local_weights = np.roll(weights, shift)  # UTC hour h is local hour h + shift
    best = int(np.argmax(local_weights))
    return best


def best_hour(timestamps: Sequence[float], tz: str, default: int, now: float | None = None) -> int:
    """The local hour the user is most active in, for send-time optimisation."""
    if len(timestamps) == 0:
        return default
    return best_local_hour(hour_weights(timestamps), tz, default, now if now is not None else max(timestamps))


def ignored_streak(history: Sequence[Past], now: float, ignored_after_s: float) -> int:
    """How many of the user's latest delivered notifications in a row they ignored
    (dismissed, or neither opened nor clicked within `ignored_after_s`)."""
    streak = 0
    delivered = sorted((h for h in history if h.delivered_at is not None), key=lambda h: -(h.delivered_at or 0))
    for past in delivered:
        engaged = past.opened_at is not None or past.clicked_at is not None
        if past.dismissed_at is not None and not past.clicked_at:
            streak += 1
        elif engaged:
            break
        elif now - (past.delivered_at or now) >= ignored_after_s:
            streak += 1
        else:
            continue  # too recent to tell: neither breaks nor extends the streak
    return streak


class Policy:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def required_p(self, min_p: float, history: Sequence[Past], now: float) -> float:
        """`min_p`, raised by fatigue: from the K-th ignored notification in a row on, each one
        adds `push_fatigue_p_step`."""
        settings = self.settings
        streak = ignored_streak(history, now, settings.push_ignored_after_s)
        if streak < settings.push_fatigue_after:
            return min_p
        return min(1.0, min_p + settings.push_fatigue_p_step * (streak - settings.push_fatigue_after + 1))

    def decide(self, candidate: Candidate, preferences: EffectivePreferences, history: Sequence[Past],
               now: float, channel_for: Callable[[list[str]], str | None], budget: Budget) -> Decision:
        settings = self.settings
        at = max(candidate.want_at, now)
        if preferences.opt_out:
            return Decision("suppressed", at, "opt_out")
        if not preferences.types.get(candidate.type, True):
            return Decision("suppressed", at, "type_off")
        channel = channel_for(preferences.channels)
        if channel is None:
            return Decision("suppressed", at, "no_channel")
        required = self.required_p(candidate.min_p, history, now)
        if candidate.p < required:
            return Decision("suppressed", at, "fatigue" if required > candidate.min_p else "low_p")
        same_item_since = now - settings.push_same_item_days * DAY
        if any(h.active and h.item_id == candidate.item_id and h.due_at >= same_item_since for h in history):
            return Decision("suppressed", at, "same_item")
        active = sorted(h.due_at for h in history if h.active)
        at, deferred = self._when(at, preferences, active)
        if at > candidate.expires_at:
            return Decision("expired", at, deferred)
        reason = self._capped(candidate, preferences, history, at)
        if reason is not None:
            return Decision("suppressed", at, reason)
        reason = budget.take(at)
        if reason is not None:
            return Decision("suppressed", at, reason)
        return Decision("scheduled", at, deferred, channel)

    def _when(self, at: float, preferences: EffectivePreferences, active: list[float]) -> tuple[float, str | None]:
        """The first time from `at` outside quiet hours and at least the minimum gap away
        from every active notification; and what deferred it, if anything did."""
        gap = self.settings.push_min_gap_s
        deferred: str | None = None
        for _ in range(MAX_DEFERRALS):
            wake = quiet_until(at, preferences)
            if wake is not None and wake > at:
                at, deferred = wake, "quiet_hours"
                continue
            close = [t for t in active if abs(t - at) < gap]
            if gap > 0 and close:
                at, deferred = max(close) + gap, deferred or "min_gap"
                continue
            return at, deferred
        return math.inf, deferred

    def _capped(self, candidate: Candidate, preferences: EffectivePreferences, history: Sequence[Past],
                at: float) -> str | None:
        settings = self.settings
        tz = preferences.timezone
        day = local(at, tz).date()
        same_day = [h for h in history if h.active and local(h.due_at, tz).date() == day]
        if len(same_day) >= preferences.max_per_day:
            return "daily_cap"
        if sum(1 for h in same_day if h.type == candidate.type) >= settings.push_max_per_type_per_day:
            return "type_cap"
        if _busiest_week(sorted(h.due_at for h in history if h.active), at) >= settings.push_max_per_week:
            return "weekly_cap"
        return None


def _busiest_week(times: list[float], at: float) -> int:
    """The most active notifications in any 7-day window that would contain `at`."""
    near = [t for t in times if at - WEEK < t < at + WEEK]
    best = 0
    for start in [at - WEEK + 1e-6, *[t for t in near if t <= at]]:
        best = max(best, sum(1 for t in near if start <= t < start + WEEK))
    return best
