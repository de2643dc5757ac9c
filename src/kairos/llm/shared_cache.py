"""The language model's lists in Redis (KAIROS_REDIS_URL): the leader computes them,
every process and node serves them.

One key per user (a hash of the id: user ids never reach Redis) holding the list as
JSON; a list computed for an older event never replaces a newer one (one Lua script).
Lists expire after `ttl_s`. If Redis cannot be reached a request is served without the
model's list and a warning is logged, at most once a minute.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import redis

from kairos.llm.cache import LlmList

log = logging.getLogger(__name__)

PREFIX = "kairos:llm-list:"
WARN_EVERY_S = 60.0

# KEYS[1]: the user's list; ARGV: the list as JSON, its position, the time to live in ms.
PUT = """
local known = redis.call('GET', KEYS[1])
if known and cjson.decode(known)['position'] > tonumber(ARGV[2]) then
    return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"""


class SharedLlmListCache:
    """LlmListCache's calls, with the lists in Redis."""

    def __init__(self, url: str, ttl_s: float = 86_400.0) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.ttl_ms = int(ttl_s * 1000)
        self._put = self.client.register_script(PUT)
        self._warned_at = float("-inf")

    @staticmethod
    def _key(user_id: str) -> str:
        return PREFIX + hashlib.blake2b(user_id.encode(), digest_size=12).hexdigest()

    def _unreachable(self, error: redis.RedisError) -> None:
        if time.monotonic() - self._warned_at >= WARN_EVERY_S:
            self._warned_at = time.monotonic()
            log.warning("language-model lists not shared: Redis unreachable (%s)", type(error).__name__)

    def put(self, user_id: str, entry: LlmList) -> None:
        value = json.dumps({"position": entry.position, "items": list(entry.items), "mode": entry.mode,
                            "computed_at": entry.computed_at, "seconds": entry.seconds}, separators=(",", ":"))
        try:
            self._put(keys=[self._key(user_id)], args=[value, entry.position, self.ttl_ms])
        except redis.RedisError as error:
            self._unreachable(error)

    def latest(self, user_id: str) -> LlmList | None:
        try:
            raw = self.client.get(self._key(user_id))
        except redis.RedisError as error:
            self._unreachable(error)
            return None
        if raw is None:
            return None
        found = json.loads(raw)
        return LlmList(int(found["position"]), tuple(found["items"]), str(found["mode"]),
                       float(found["computed_at"]), float(found["seconds"]))

    def fresh(self, user_id: str, position: int) -> LlmList | None:
        """The user's list if it was computed for their latest event (`position`)."""
        entry = self.latest(user_id)
        return entry if entry is not None and entry.position == position else None

    def forget(self, user_id: str) -> None:
        try:
            self.client.delete(self._key(user_id))
        except redis.RedisError as error:
            self._unreachable(error)

    def __len__(self) -> int:
        """Users with a list (a scan of the keys: for status pages, not the request path)."""
        try:
            return sum(1 for _ in self.client.scan_iter(match=PREFIX + "*", count=1000))
        except redis.RedisError as error:
            self._unreachable(error)
            return 0

    def close(self) -> None:
        self.client.close()
