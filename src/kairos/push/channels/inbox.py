"""`inbox`: the in-app list. The outbox row is the inbox entry, so delivering is recording it
(GET /v1/users/{id}/notifications lists it, and the SSE stream of that user gets it)."""

from __future__ import annotations

from kairos.push.outbox import Outcome
from kairos.push.schema import Notification


class InboxChannel:
    name = "inbox"

    def reaches(self, user_id: str) -> bool:
        return True

    async def send(self, notification: Notification) -> Outcome:
        return Outcome(notification.notification_id, "delivered")

    async def close(self) -> None:
        return None
