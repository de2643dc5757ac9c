"""User ids as Kairos keeps them.

With `KAIROS_PSEUDONYMISE_KEY` set, every user id that comes in through the API or the
CLI is replaced, before anything is stored or computed, by a keyed hash of it (HMAC-SHA256
under the key): the database, the snapshot, the logs and the models never hold the
platform's own ids, and without the key they cannot be matched to them. Answers to a
caller carry the id the caller sent. What Kairos sends on its own (notifications by
webhook or email, campaign records) carries the pseudonym: the platform, which holds the
key, computes the same for its users to match them (`kairos pseudonym USER_ID`).
"""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "p-"


class Pseudonyms:
    def __init__(self, key: str = "") -> None:
        self._key = key.encode("utf-8") if key else None

    @property
    def active(self) -> bool:
        return self._key is not None

    def user(self, user_id: str) -> str:
        """The id Kairos keeps for this user (the id itself without a key)."""
        if self._key is None:
            return user_id
        return PREFIX + hmac.new(self._key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()[:40]

    def users(self, user_ids: list[str]) -> list[str]:
        return [self.user(user_id) for user_id in user_ids]
