"""The channel protocol: `send(notification) -> Outcome`. Adding Web Push or a vendor is
one file that implements it, and one line in `push/channels/__init__.py`."""

from __future__ import annotations

import random
from typing import Protocol

from kairos.push.outbox import Outcome
from kairos.push.schema import Notification


class Channel(Protocol):
    name: str

    def reaches(self, user_id: str) -> bool:
        """Whether this channel can reach the user now (configured, has an address)."""
        ...

    async def send(self, notification: Notification) -> Outcome:
        """One delivery attempt; never raises for a delivery problem (the outcome says)."""
        ...

    async def close(self) -> None: ...


def retry_outcome(notification: Notification, error: str, now: float, max_attempts: int,
                  base_s: float, max_s: float) -> Outcome:
    """Retry later with exponential backoff and jitter (so a receiver coming back up is not hit by
    every retry at once), or `dead` once the attempts are used up."""
    if notification.attempts >= max_attempts:
        return Outcome(notification.notification_id, "dead", f"{error} (after {notification.attempts} attempts)")
    delay = min(max_s, base_s * 2 ** (notification.attempts - 1)) * random.uniform(0.5, 1.5)
    return Outcome(notification.notification_id, "retry", error, now + delay)
