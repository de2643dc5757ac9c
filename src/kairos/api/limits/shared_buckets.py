"""Token buckets in Redis (KAIROS_REDIS_URL): one limit for a key across every process
and node, not one per process.

One Lua script takes every key's cost or none, atomically, on Redis's clock (nodes'
clocks may differ). A bucket expires once it would be full again, so idle keys cost
nothing. Key names are hashes: user ids never reach Redis. If Redis cannot be reached
the request is let through (a limit must not take the service down) and a warning is
logged, at most once a minute.
"""

from __future__ import annotations

import hashlib
import logging
import time

import redis

log = logging.getLogger(__name__)

PREFIX = "kairos:bucket:"
WARN_EVERY_S = 60.0

# KEYS: the buckets; ARGV: rate, burst, then each key's cost. Returns {} when taken,
# else {index, seconds to wait, ...} for the keys that are short.
TAKE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local levels, short = {}, {}
for i, key in ipairs(KEYS) do
    local stored = redis.call('HMGET', key, 'tokens', 'at')
    local tokens = tonumber(stored[1]) or burst
    local at = tonumber(stored[2]) or now
    local level = math.min(burst, tokens + math.max(0, now - at) * rate)
    levels[i] = level
    local cost = tonumber(ARGV[i + 2])
    if cost > level then
        table.insert(short, i)
        table.insert(short, tostring((cost - level) / rate))
    end
end
if #short > 0 then
    return short
end
local ttl_ms = math.ceil(burst / rate * 1000) + 1000
for i, key in ipairs(KEYS) do
    redis.call('HSET', key, 'tokens', tostring(levels[i] - tonumber(ARGV[i + 2])), 'at', tostring(now))
    redis.call('PEXPIRE', key, ttl_ms)
end
return {}
"""


class SharedTokenBuckets:
    """TokenBuckets' `wait_for`, with the buckets in Redis under `scope`."""

    def __init__(self, url: str, scope: str, rate: float, burst: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst = rate, burst
        self.client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._take = self.client.register_script(TAKE)
        self._prefix = f"{PREFIX}{scope}:"
        self._warned_at = float("-inf")

    def _name(self, key: str) -> str:
        return self._prefix + hashlib.blake2b(key.encode(), digest_size=12).hexdigest()

    def wait_for(self, costs: dict[str, float]) -> dict[str, float]:
        """Take every key's cost, or none of them: {} when taken, else the seconds each
        short key must wait (a cost above the burst never fits: infinity)."""
        keys = list(costs)
        try:
            found = self._take(keys=[self._name(k) for k in keys],
                                args=[repr(self.rate), repr(self.burst), *(repr(float(costs[k])) for k in keys)])
        except redis.RedisError as error:
            if time.monotonic() - self._warned_at >= WARN_EVERY_S:
                self._warned_at = time.monotonic()
                log.warning("rate limit not applied: Redis unreachable (%s)", type(error).__name__)
            return {}
        short: dict[str, float] = {}
        for index, wait in zip(found[::2], found[1::2], strict=True):
            key = keys[int(index) - 1]
            short[key] = float("inf") if costs[key] > self.burst else max(float(wait), 1.0 / self.rate)
        return short

    def close(self) -> None:
        self.client.close()
