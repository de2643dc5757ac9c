"""Each user's consent and limits, over the service's defaults (PUT /v1/users/{id}/push)."""

from __future__ import annotations

import threading

from kairos.config import Settings
from kairos.push.database import PushDatabase
from kairos.push.schema import EffectivePreferences, NotificationType, PushPreferences, QuietHours


class Preferences:
    """Stored preferences of the users who set any, cached in memory (a user without a row
    follows the defaults, so millions of users cost nothing here)."""

    def __init__(self, db: PushDatabase, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._lock = threading.Lock()
        self._default: EffectivePreferences | None = None
        self._stored: dict[str, PushPreferences] = {
            user_id: PushPreferences.model_validate_json(raw)
            for user_id, raw in db.query("SELECT user_id, preferences FROM push_preferences")
        }

    def get(self, user_id: str) -> EffectivePreferences:
        with self._lock:
            stored = self._stored.get(user_id)
        return self.effective(user_id, stored)

    def for_policy(self, user_id: str) -> EffectivePreferences:
        """As `get`, but users without preferences of their own share one object (its
        user_id is "*"): deciding for a million users builds no million models."""
        with self._lock:
            stored = self._stored.get(user_id)
            if stored is None:
                if self._default is None:
                    self._default = self.effective("*", None)
                return self._default
        return self.effective(user_id, stored)

    def stored(self, user_id: str) -> PushPreferences | None:
        with self._lock:
            return self._stored.get(user_id)

    def effective(self, user_id: str, stored: PushPreferences | None) -> EffectivePreferences:
        return effective_preferences(self.settings, user_id, stored)

    def set(self, user_id: str, preferences: PushPreferences, now: float) -> EffectivePreferences:
        raw = preferences.model_dump_json()
        with self.db.transaction() as db:
            db.execute("INSERT INTO push_preferences (user_id, preferences, updated_at) VALUES (?, ?, ?) "
                       "ON CONFLICT (user_id) DO UPDATE SET preferences = excluded.preferences, "
                       "updated_at = excluded.updated_at", (user_id, raw, now))
        with self._lock:
            self._stored[user_id] = preferences
        return self.effective(user_id, preferences)

    def forget(self, user_id: str) -> None:
        with self.db.transaction() as db:
            db.execute("DELETE FROM push_preferences WHERE user_id = ?", (user_id,))
        with self._lock:
            self._stored.pop(user_id, None)


def effective_preferences(settings: Settings, user_id: str, stored: PushPreferences | None) -> EffectivePreferences:
    """A user's own preferences over the service's defaults."""
    own = stored or PushPreferences()
    start, end = settings.push_default_quiet_hours
    return EffectivePreferences(
        user_id=user_id,
        opt_out=own.opt_out,
        channels=list(own.channels) if own.channels is not None else list(settings.push_default_channels),
        types={kind.value: own.types.get(kind, True) for kind in NotificationType},
        timezone=own.timezone or settings.push_default_timezone,
        quiet_hours=own.quiet_hours or QuietHours(start=start, end=end),
        max_per_day=own.max_per_day if own.max_per_day is not None else settings.push_max_per_day,
        customised=stored is not None,
    )
