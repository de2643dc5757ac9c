"""One background thread that works through users whose behaviour changed: a bounded
queue in which a user waits at most once (a burst of their events is one run), the
oldest dropped when it is full (their next event queues them again)."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)


class CoalescingWorker:
    def __init__(self, work: Callable[[str], None], capacity: int = 10_000, name: str = "kairos-llm") -> None:
        self.work = work
        self.capacity = capacity
        self.name = name
        self.dropped = 0
        self.done = 0
        self.failed = 0
        self._queue: deque[str] = deque()
        self._pending: set[str] = set()
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.busy = False

    def submit(self, keys: Iterable[str]) -> None:
        with self._cond:
            for key in keys:
                if key in self._pending:
                    continue  # already waiting: the run will see every event so far
                if len(self._queue) >= self.capacity:
                    self._pending.discard(self._queue.popleft())
                    self.dropped += 1
                self._queue.append(key)
                self._pending.add(key)
            self._cond.notify()

    @property
    def depth(self) -> int:
        with self._cond:
            return len(self._queue)

    def start(self, before: Callable[[], None] | None = None) -> None:
        """Run in a thread; `before` (e.g. loading the model) runs first, in it."""
        self._stop = False
        self._thread = threading.Thread(target=self._run, args=(before,), name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def idle(self) -> bool:
        with self._cond:
            return not self._queue and not self.busy

    def _run(self, before: Callable[[], None] | None) -> None:
        if before is not None:
            try:
                before()
            except Exception:  # noqa: BLE001 - `before` reports its own failure
                log.exception("%s: could not start", self.name)
                return
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                key = self._queue.popleft()
                self._pending.discard(key)
                self.busy = True
            try:
                self.work(key)
                self.done += 1
            except Exception:  # noqa: BLE001 - one user's failure stops no one else's
                self.failed += 1
                log.exception("%s: failed for %s", self.name, key)
            finally:
                with self._cond:
                    self.busy = False
