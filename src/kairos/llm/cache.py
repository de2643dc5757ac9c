"""The model's latest list per user, keyed by the user's event count when it was
computed: a list is served only while it is fresh for the user's latest event."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class LlmList:
    position: int  # the user's event count the list was computed for
    items: tuple[str, ...]  # item ids, the model's order
    mode: str  # rerank | generate
    computed_at: float  # wall time
    seconds: float  # the model's time for it


class ListCache(Protocol):
    """Where lists are kept: this process's memory, or Redis for every node (shared_cache.py)."""

    def put(self, user_id: str, entry: LlmList) -> None: ...

    def fresh(self, user_id: str, position: int) -> LlmList | None: ...

    def latest(self, user_id: str) -> LlmList | None: ...

    def forget(self, user_id: str) -> None: ...

    def __len__(self) -> int: ...


class LlmListCache:
    def __init__(self, max_users: int = 100_000) -> None:
        self.max_users = max_users
        self._lists: OrderedDict[str, LlmList] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, user_id: str, entry: LlmList) -> None:
        with self._lock:
            known = self._lists.get(user_id)
            if known is not None and known.position > entry.position:
                return  # a newer list landed first
            self._lists[user_id] = entry
            self._lists.move_to_end(user_id)
            while len(self._lists) > self.max_users:
                self._lists.popitem(last=False)

    def fresh(self, user_id: str, position: int) -> LlmList | None:
        """The user's list if it was computed for their latest event (`position`)."""
        with self._lock:
            entry = self._lists.get(user_id)
        return entry if entry is not None and entry.position == position else None

    def latest(self, user_id: str) -> LlmList | None:
        with self._lock:
            return self._lists.get(user_id)

    def forget(self, user_id: str) -> None:
        with self._lock:
            self._lists.pop(user_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._lists)


def list_cache_for(redis_url: str) -> ListCache:
    """Shared by every process and node through Redis, else this process's own."""
    if redis_url:
        # redis only when asked for
        from kairos.llm.shared_cache import SharedLlmListCache

        return SharedLlmListCache(redis_url)
    return LlmListCache()
