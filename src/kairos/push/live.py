"""Live streams (server-sent events): each notification the moment it is delivered, and a
user's recommendation list each time their events change it.

Subscribers are asyncio queues on the server's event loop; publishers are other
threads (the delivery tail, the engine's writer), so publishing hops onto the loop.
Notifications reach the hub from the outbox itself (`SentTail` reads deliveries by
position), so a delivery made by a `kairos push-worker` process streams too.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from kairos.push.outbox import Outbox

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1000  # a client that reads nothing is dropped before it costs memory


class LiveHub:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._notifications: dict[str, set[asyncio.Queue[Any]]] = defaultdict(set)
        self._lists: dict[str, set[asyncio.Queue[Any]]] = defaultdict(set)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # -- subscribing (on the loop) --------------------------------------------------------

    def subscribe(self, kind: str, user_id: str) -> asyncio.Queue[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE_LIMIT)
        with self._lock:
            self._table(kind)[user_id].add(queue)
        return queue

    def unsubscribe(self, kind: str, user_id: str, queue: asyncio.Queue[Any]) -> None:
        with self._lock:
            table = self._table(kind)
            table[user_id].discard(queue)
            if not table[user_id]:
                del table[user_id]

    def watched(self, kind: str) -> set[str]:
        with self._lock:
            return set(self._table(kind))

    # -- publishing (from any thread) -----------------------------------------------------

    def publish(self, kind: str, user_id: str, message: Any) -> None:
        loop = self._loop
        with self._lock:
            queues = list(self._table(kind).get(user_id, ()))
        if not queues or loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._put, queues, message)
        except RuntimeError:  # the loop stopped meanwhile
            pass

    def poke(self, kind: str, user_ids: Iterable[str]) -> None:
        """Tell the user's streams that something changed (they look for themselves)."""
        watched = self.watched(kind)
        for user_id in set(user_ids) & watched:
            self.publish(kind, user_id, None)

    @staticmethod
    def _put(queues: list[asyncio.Queue[Any]], message: Any) -> None:
        for queue in queues:
            if not queue.full():
                queue.put_nowait(message)

    def _table(self, kind: str) -> dict[str, set[asyncio.Queue[Any]]]:
        return self._notifications if kind == "notifications" else self._lists


class SentTail:
    """Follows the outbox's deliveries by position and hands each to the hub."""

    def __init__(self, outbox: Outbox, hub: LiveHub, poll_s: float) -> None:
        self.outbox = outbox
        self.hub = hub
        self.poll_s = poll_s
        self.position = outbox.last_sent()  # only what is delivered from now on
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kairos-push-live", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            try:
                self.forward()
            except Exception:  # noqa: BLE001 - streams must outlive a hiccup
                log.exception("could not read deliveries for the live streams")

    def forward(self) -> int:
        forwarded = 0
        while True:
            batch = self.outbox.sent_after(self.position)
            if not batch:
                return forwarded
            watched = self.hub.watched("notifications")
            for seq, notification in batch:
                self.position = seq
                if notification.user_id in watched:
                    self.hub.publish("notifications", notification.user_id, notification.model_dump(mode="json"))
                    forwarded += 1
