"""The result cache: a served list kept for a user until anything it was made from moves.

Keyed by everything a list depends on that can change between two requests of one user:
the user's own state (its revision moves with each of their events and each forget, so a
list is never served stale after the user acts), the catalogue's generation (an item
added, changed or withdrawn), the models served, and the request's options. What other
users do moves popularity, trends and co-visitation a little at a time: that is what the
time to live bounds, along with a list the language model writes for the user in the
leading process. Off at 0 (`KAIROS_RESULT_CACHE_TTL_S`); docs/benchmarks.md measures both.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

Value = TypeVar("Value")


class ResultCache(Generic[Value]):
    """Least recently used, at most `size` lists, each for `ttl_s` seconds. Not thread-safe:
    the caller holds the state's lock (it reads the key's parts under it anyway)."""

    def __init__(self, ttl_s: float, size: int) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self._lists: OrderedDict[Hashable, tuple[float, Value]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0 and self.size > 0

    def get(self, key: Hashable) -> Value | None:
        found = self._lists.get(key)
        if found is None or found[0] < time.monotonic():
            if found is not None:
                del self._lists[key]
            self.misses += 1
            return None
        self._lists.move_to_end(key)
        self.hits += 1
        return found[1]

    def put(self, key: Hashable, value: Value) -> None:
        self._lists[key] = (time.monotonic() + self.ttl_s, value)
        self._lists.move_to_end(key)
        while len(self._lists) > self.size:
            self._lists.popitem(last=False)

    def forget(self, user_id: str) -> None:
        """Drop a forgotten user's lists (keys start with the user id); rare, so a scan."""
        for key in [key for key in self._lists if isinstance(key, tuple) and key and key[0] == user_id]:
            del self._lists[key]

    def clear(self) -> None:
        self._lists.clear()

    def __len__(self) -> int:
        return len(self._lists)
