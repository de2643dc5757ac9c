"""Token buckets by key: `rate` tokens a second, at most `burst` saved up.

Per process: with several workers each holds its own buckets; with KAIROS_REDIS_URL
they are shared instead (shared_buckets.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from kairos.config import Settings

MAX_BUCKETS = 100_000  # beyond, full (idle) buckets are forgotten: they hold nothing


class Buckets(Protocol):
    rate: float

    def wait_for(self, costs: dict[str, float]) -> dict[str, float]: ...


class TokenBuckets:
    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)

    def wait_for(self, costs: dict[str, float]) -> dict[str, float]:
        """Take every key's cost, or none of them: {} when taken, else the seconds each
        short key must wait (a refused request changes nothing)."""
        with self._lock:
            now = self.clock()
            levels = {key: self._level(key, now) for key in costs}
            short = {key: (cost - levels[key]) / self.rate for key, cost in costs.items()
                     if cost > levels[key]}
            if short:
                return {key: max(wait, 1.0 / self.rate) if costs[key] <= self.burst else float("inf")
                        for key, wait in short.items()}
            for key, cost in costs.items():
                self._buckets[key] = (levels[key] - cost, now)
            if len(self._buckets) > MAX_BUCKETS:
                self._forget_full(now)
            return {}

    def _forget_full(self, now: float) -> None:
        for key in [k for k in self._buckets if self._level(k, now) >= self.burst]:
            del self._buckets[key]


def buckets_for(settings: Settings, scope: str, rate: float, burst: float) -> Buckets:
    """Shared by every process and node with KAIROS_REDIS_URL, else this process's own."""
    if settings.redis_url:
        # redis only when asked for
        from kairos.api.limits.shared_buckets import SharedTokenBuckets

        return SharedTokenBuckets(settings.redis_url, scope, rate, burst)
    return TokenBuckets(rate, burst)
