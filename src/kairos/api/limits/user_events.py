"""Events a second per user (KAIROS_USER_EVENT_RATE_LIMIT): one user's flood is
refused with a 429 naming that user, and the batch changes nothing, so the platform
can retry it; other users' events keep flowing."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

from kairos.api.limits.buckets import Buckets, TokenBuckets


class UserEventsLimited(Exception):
    def __init__(self, waits: dict[str, float], rate: float) -> None:
        self.waits = waits
        self.rate = rate
        self.retry_after = math.ceil(min(min(waits.values()), 3600.0))
        users = sorted(waits)
        super().__init__(f"user {users[0]!r} sends more than {rate:g} events a second"
                         + (f" (and {len(users) - 1} more users)" if len(users) > 1 else ""))


class UserEventLimit:
    def __init__(self, rate: float, burst: float, buckets: Buckets | None = None) -> None:
        """`buckets`: shared ones (Redis); default: this process's own."""
        self.buckets = buckets or TokenBuckets(rate, burst)

    def take(self, user_ids: Iterable[str]) -> None:
        """Count a batch's events against their users; raises UserEventsLimited (and takes
        nothing) when any of them is over the limit."""
        short = self.buckets.wait_for({user: float(n) for user, n in Counter(user_ids).items()})
        if short:
            raise UserEventsLimited(short, self.buckets.rate)
