"""The delivery worker: claims due notifications from the outbox and sends them.

It runs in `kairos serve` (a thread with its own asyncio loop, so deliveries never
wait on request handling) and, for more capacity, in `kairos push-worker`
processes: claims are transactions, so workers never take the same row while its
lease holds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping

from kairos.clock import Clock
from kairos.config import Settings
from kairos.push.channels import Channel
from kairos.push.outbox import Outbox, Outcome
from kairos.push.schema import Notification

log = logging.getLogger(__name__)

DeliveredHook = Callable[[list[Notification], list[Outcome]], None]
FLUSH_EVERY = 50  # outcomes recorded in one transaction ...
FLUSH_AFTER_S = 0.05  # ... or after this long, whichever comes first


class DeliveryWorker:
    def __init__(self, outbox: Outbox, settings: Settings, clock: Clock, channels: Mapping[str, Channel],
                 on_finished: DeliveredHook | None = None) -> None:
        self.outbox = outbox
        self.settings = settings
        self.clock = clock
        self.channels = dict(channels)
        self.on_finished = on_finished
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._recovered_at = float("-inf")
        self.delivered = 0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(ready,), name="kairos-push-delivery", daemon=True)
        self._thread.start()
        ready.wait(5)

    def stop(self) -> None:
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def wake(self) -> None:
        """Look for due notifications now (called after new ones are scheduled)."""
        loop, event = self._loop, self._wake
        if loop is not None and event is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def _main(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._run(ready))
        finally:
            loop.run_until_complete(self._close_channels())
            loop.close()

    async def _run(self, ready: threading.Event) -> None:
        self._wake = asyncio.Event()
        ready.set()
        while not self._stop.is_set():
            try:
                sent = await self.deliver_due()
            except Exception:  # noqa: BLE001 - a bad batch must not end delivery
                log.exception("push delivery failed; retrying shortly")
                sent = 0
            if sent:
                continue  # more may be due at once
            await self._sleep()

    async def _sleep(self) -> None:
        assert self._wake is not None
        timeout = self.settings.push_poll_s
        due = self.outbox.next_due()
        if due is not None:
            timeout = min(timeout, max(0.0, due - self.clock.now()))
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=max(timeout, 0.001))
        except TimeoutError:
            pass
        self._wake.clear()

    async def _close_channels(self) -> None:
        for channel in self.channels.values():
            await channel.close()

    # -- one round ------------------------------------------------------------------------

    async def deliver_due(self) -> int:
        """Claim one batch of due notifications, send them concurrently, record the outcomes.
        Returns how many were claimed."""
        settings = self.settings
        now = self.clock.now()
        if now - self._recovered_at >= settings.push_lease_s / 4:
            self._recovered_at = now
            recovered = self.outbox.recover(now)
            if recovered:
                log.warning("%d notifications were left sending by a worker that stopped; sending them again",
                            recovered)
        batch = self.outbox.claim(now, self.name, settings.push_batch, settings.push_lease_s)
        if not batch:
            return 0
        limit = asyncio.Semaphore(settings.push_concurrency)

        async def one(notification: Notification) -> Outcome:
            async with limit:
                channel = self.channels.get(notification.channel or "")
                if channel is None:
                    return Outcome(notification.notification_id, "failed", f"no channel {notification.channel!r}")
                try:
                    return await channel.send(notification)
                except Exception as error:  # noqa: BLE001 - a channel bug fails one notification, not the batch
                    log.exception("channel %s raised", channel.name)
                    return Outcome(notification.notification_id, "failed", f"{type(error).__name__}: {error}")

        # Outcomes are recorded as they come, a few at a time: a crash re-sends only what was
        # in flight or not yet recorded, not the whole batch.
        done: list[Outcome] = []
        flushed_at = time.monotonic()
        for finished in asyncio.as_completed([one(n) for n in batch]):
            done.append(await finished)
            if len(done) >= FLUSH_EVERY or time.monotonic() - flushed_at >= FLUSH_AFTER_S:
                self._record(batch, done)
                done, flushed_at = [], time.monotonic()
        self._record(batch, done)
        return len(batch)

    def _record(self, batch: list[Notification], outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        self.outbox.finish(outcomes, self.clock.now(), self.name)
        self.delivered += sum(1 for o in outcomes if o.result == "delivered")
        if self.on_finished is not None:
            self.on_finished(batch, outcomes)

    def run_once(self) -> int:
        """One round on a private loop (tests, the CLI)."""
        return asyncio.run(self._once())

    async def _once(self) -> int:
        try:
            return await self.deliver_due()
        finally:
            await self._close_channels()
