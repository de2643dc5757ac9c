"""Each user's consent and limits, over the service's defaults (PUT /v1/users/{id}/push)."""

from __future__ import annotations

import threading
import time

from kairos.config import Settings
from kairos.push.database import PushDatabase, meta_in, set_meta
from kairos.push.schema import EffectivePreferences, NotificationType, PushPreferences, QuietHours


REFRESH_S = 0.5  # how stale a decision's view of others' changes may be, between explicit refreshes


class Preferences:
    """Stored preferences of the users who set any, cached in memory (a user without a row
    follows the defaults, so millions of users cost nothing here).

    Any process or node may change them: every change takes the next number of a counter
    in the same exclusive transaction, so `refresh` reads only rows changed since it last
    looked; a forgotten user (rare) makes the next refresh reload everything."""

    def __init__(self, db: PushDatabase, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._lock = threading.Lock()
        self._default: EffectivePreferences | None = None
        self._stored: dict[str, PushPreferences] = {}
        self._version = -1
        self._forgets = ""
        self._refreshed_at = float("-inf")
        self.refresh()

    def refresh(self) -> None:
        """Take in changes others made (the decider calls this before each decision)."""
        state = dict(self.db.query("SELECT key, value FROM push_meta WHERE key IN "
                                   "('preferences_version', 'preferences_forgets')"))
        version, forgets = int(state.get("preferences_version", 0)), str(state.get("preferences_forgets", ""))
        with self._lock:
            self._refreshed_at = time.monotonic()
            if version == self._version and forgets == self._forgets:
                return
            reload = forgets != self._forgets
            since = -1 if reload else self._version
        rows = self.db.query("SELECT user_id, preferences FROM push_preferences WHERE version > ?", (since,))
        changed = {user_id: PushPreferences.model_validate_json(raw) for user_id, raw in rows}
        with self._lock:
            if reload:
                self._stored = changed
            else:
                self._stored.update(changed)
            self._version, self._forgets = version, forgets

    def _fresh(self) -> None:
        if time.monotonic() - self._refreshed_at >= REFRESH_S:
            self.refresh()

    def get(self, user_id: str) -> EffectivePreferences:
        """What the API shows: read from the database, so always current."""
        rows = self.db.query("SELECT preferences FROM push_preferences WHERE user_id = ?", (user_id,))
        stored = PushPreferences.model_validate_json(rows[0][0]) if rows else None
        return self.effective(user_id, stored)

    def for_policy(self, user_id: str) -> EffectivePreferences:
        """As `get`, from the cache: users without preferences of their own share one object
        (its user_id is "*"): deciding for a million users builds no million models."""
        self._fresh()
        with self._lock:
            stored = self._stored.get(user_id)
            if stored is None:
                if self._default is None:
                    self._default = self.effective("*", None)
                return self._default
        return self.effective(user_id, stored)

    def stored(self, user_id: str) -> PushPreferences | None:
        self._fresh()
        with self._lock:
            return self._stored.get(user_id)

    def effective(self, user_id: str, stored: PushPreferences | None) -> EffectivePreferences:
        return effective_preferences(self.settings, user_id, stored)

    def set(self, user_id: str, preferences: PushPreferences, now: float) -> EffectivePreferences:
        raw = preferences.model_dump_json()
        with self.db.transaction() as db:
            version = int(meta_in(db, "preferences_version", "0")) + 1
            db.execute("INSERT INTO push_preferences (user_id, preferences, updated_at, version) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (user_id) DO UPDATE SET preferences = excluded.preferences, "
                       "updated_at = excluded.updated_at, version = excluded.version", (user_id, raw, now, version))
            set_meta(db, "preferences_version", str(version))
        with self._lock:
            self._stored[user_id] = preferences
        return self.effective(user_id, preferences)

    def forget(self, user_id: str) -> None:
        with self.db.transaction() as db:
            if db.execute("DELETE FROM push_preferences WHERE user_id = ?", (user_id,)).rowcount:
                set_meta(db, "preferences_forgets", str(int(meta_in(db, "preferences_forgets", "0")) + 1))
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
