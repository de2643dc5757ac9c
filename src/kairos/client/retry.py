"""When to send a call again, and after how long: exponential backoff with jitter, or
the server's Retry-After."""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

from kairos.client.calls import Call

RETRIED_STATUSES = {429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Retries:
    attempts: int = 4  # sends in all, the first included
    backoff_s: float = 0.2  # the first wait; doubled each time
    max_backoff_s: float = 10.0

    def wait_s(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before send number `attempt + 1` (attempt counts from 0)."""
        if retry_after is not None:
            return min(retry_after, self.max_backoff_s)
        return min(self.max_backoff_s, self.backoff_s * 2 ** attempt) * random.uniform(0.5, 1.0)

    def after_error(self, call: Call[object], attempt: int, error: httpx.TransportError) -> bool:
        """A connection that failed: a request never sent may always go again; one that may
        have arrived only when sending it twice changes nothing."""
        never_sent = isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
        return attempt + 1 < self.attempts and (never_sent or call.retry_safe)

    def after_status(self, call: Call[object], attempt: int, response: httpx.Response) -> bool:
        if attempt + 1 >= self.attempts or response.status_code not in RETRIED_STATUSES:
            return False
        if response.status_code == 429:
            return True  # refused before anything was done
        if response.status_code == 503 and _code(response) == "feature_disabled":
            return False  # switched off: asking again will not switch it on
        return call.retry_safe


def _code(response: httpx.Response) -> str | None:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None
