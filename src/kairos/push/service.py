"""PushService: triggers -> targeting -> policy -> outbox -> channels, wired together.

It follows the engine as a listener (the engine does not know push exists): events
mark users' cached vectors dirty and wake the decider; item upserts wake it too.
The decider thread reads what changed durably (the event log after its cursor, the
items against its snapshot), records triggers, and turns due triggers into outbox
rows in one transaction each. The delivery worker sends what is due; the live hub
streams deliveries and list changes to SSE clients.

`step()` is one pass of the decider: tests drive it with a simulated clock.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kairos.config import DAY, Settings
from kairos.push.calibration import DEFAULT, Calibrator, describe
from kairos.push.channels import Channel, EmailChannel, InboxChannel, WebhookChannel
from kairos.push.channels.webhook import read_config, write_config
from kairos.push.config import load_triggers
from kairos.push.database import dumps, meta_in, open_push_database, set_meta
from kairos.push.engine_view import EngineView
from kairos.push.live import LiveHub, SentTail
from kairos.push.outbox import NewNotification, Outbox, Outcome
from kairos.push.policy import Budget, Candidate, Past, Policy, local, next_at_hour
from kairos.push.preferences import Preferences
from kairos.push.schema import (
    Campaign,
    CampaignRequest,
    EffectivePreferences,
    Notification,
    PreviewEntry,
    PushPreferences,
    WebhookConfig,
)
from kairos.push.targeting import Target, Targeter
from kairos.push.triggers import (
    INTEREST_TYPES,
    ItemState,
    Trigger,
    TriggerQueue,
    event_triggers,
    item_triggers,
    price_of,
)
from kairos.push.user_vectors import UserVectors
from kairos.push.worker import DeliveryWorker
from kairos.schema import Event, EventType
from kairos.store.base import EventRecord, ItemRecord, UserRecord

if TYPE_CHECKING:
    from kairos.engine import Engine
    from kairos.push.metrics import PushMetrics

log = logging.getLogger(__name__)

EVENTS_PER_STEP = 10_000
TRIGGERS_PER_STEP = 50
DIGEST_SCAN_S = 600.0  # how often users are checked for a digest due within the hour
CALIBRATION_CHECK_S = 30.0
COPY_LEAD_S = 60.0  # a notification due at least this much later gets the language model's text, if it runs
BACKGROUND_MODEL_ROWS = 64  # behaviour-model rows recomputed per idle decider pass (a transformer pass each)
# Idle passes refresh users' rows at most this often: under a steady stream of events every
# user is always dirty, and recomputing them as fast as they change took the CPU that
# ingest and requests need. Targeting refreshes what it reads before it scores anyway.
VECTORS_REFRESH_S = 2.0
FEEDBACK_EVENTS = {"opened": EventType.push_open, "clicked": EventType.push_click,
                   "dismissed": EventType.push_dismiss}


class NotDelivered(ValueError):
    """Feedback for a notification that never reached the user."""


@dataclass(slots=True)
class Proposal:
    """A notification a trigger would like to send, before the policy has its say."""

    user_id: str
    item_id: str
    p: float
    min_p: float
    want_at: float
    expires_at: float
    title: str
    body: str
    items: list[str] = field(default_factory=list)
    campaign_id: str | None = None


class PushService:
    def __init__(self, engine: Engine, *, deliver: bool | None = None, metrics: PushMetrics | None = None,
                 decide: bool = True) -> None:
        """`decide`: this process decides and delivers (the leader's push); otherwise it
        serves the push API and live streams only, until `start_deciding`."""
        self.engine = engine
        self.settings: Settings = engine.settings
        self.clock = engine.clock
        self.config = load_triggers(self.settings.push_triggers)
        self.db = open_push_database(self.settings, engine.store_path())
        self.view = EngineView(engine)
        self.vectors = UserVectors(self.view)
        # Given (notification id, user, item) of rows due later, writes their text before they go
        # (the language model: kairos.llm.service.LlmService.write_copy); None: templates only.
        self.copywriter: Callable[[list[tuple[str, str, str]]], None] | None = None
        self.calibrator = self._stored_calibration() or DEFAULT
        self.targeter = Targeter(self.view, self.vectors, self.calibrator)
        self.policy = Policy(self.settings)
        self.outbox = Outbox(self.db)
        self.triggers = TriggerQueue(self.db)
        self.preferences = Preferences(self.db, self.settings)
        self.metrics = metrics
        self.channels: dict[str, Channel] = {
            "webhook": WebhookChannel(self.db, self.settings, self.clock),
            "email": EmailChannel(self.settings, self.clock, self.view.address),
            "inbox": InboxChannel(),
        }
        self.hub = LiveHub()
        self.tail = SentTail(self.outbox, self.hub, self.settings.push_poll_s)
        self._deliver = self.settings.push_inline_worker if deliver is None else deliver
        self.worker: DeliveryWorker | None = None
        self._changed_items: list[ItemRecord] = []
        self._items_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._digest_scan_at = float("-inf")
        self._vectors_refreshed_at = float("-inf")
        self._calibration_checked_at = time.monotonic()
        self._calibration_job: subprocess.Popen[str] | None = None
        self._calibration_started = 0.0
        self._skips: Counter[str] = Counter()
        self.deciding = False
        if decide:
            self._become_decider()
        engine.listeners.add(self)

    # -- lifecycle ------------------------------------------------------------------------

    def _initialise(self) -> None:
        """First start on a database: push begins at the present (no history is notified);
        later starts catch up on what they missed."""
        with self.db.transaction() as db:
            if meta_in(db, "event_cursor", "") == "":
                set_meta(db, "event_cursor", str(self.engine.store.last_position()))
        first = self.db.meta("items_initialised") is None
        self._reconcile_items(list(self.engine.store.iter_items()), notify=not first)
        if first:
            with self.db.transaction() as db:
                set_meta(db, "items_initialised", "1")
        self.vectors.mark_all()

    def _become_decider(self) -> None:
        self._initialise()
        if self._deliver:
            self.worker = DeliveryWorker(self.outbox, self.settings, self.clock, self.channels, self._finished)
        self.deciding = True

    def start(self) -> None:
        """The live streams always; the decider and delivery where this process decides."""
        self.tail.start()
        if self.deciding:
            self._start_decider()

    def start_deciding(self) -> None:
        """Take over deciding and delivering (the process that did it is gone)."""
        if not self.deciding:
            self._become_decider()
            self._start_decider()

    def _start_decider(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kairos-push-decider", daemon=True)
        self._thread.start()
        if self.worker is not None:
            self.worker.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.worker is not None:
            self.worker.stop()
        self.tail.stop()
        job = self._calibration_job
        if job is not None and job.poll() is None:
            job.terminate()
        self.engine.listeners.remove(self)

    def close(self) -> None:
        self.db.close()

    # -- the engine tells us --------------------------------------------------------------

    def events_ingested(self, records: Sequence[EventRecord]) -> None:
        users = {r.user_id for r in records}
        self.hub.poke("lists", users)  # live streams open on this process
        if self.deciding:
            self.vectors.mark(users)
            self._wake.set()

    def items_upserted(self, records: Sequence[ItemRecord]) -> None:
        if self.deciding:
            with self._items_lock:
                self._changed_items.extend(records)
            self._wake.set()

    def users_upserted(self, records: Sequence[UserRecord]) -> None:
        if self.deciding:
            self.vectors.mark(r.user_id for r in records)

    def user_forgotten(self, user_id: str) -> None:
        self.vectors.forget(user_id)
        self.preferences.forget(user_id)
        self.outbox.forget(user_id)
        self.triggers.forget(user_id)

    # -- the decider ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.step()
            except Exception:  # noqa: BLE001 - one bad trigger must not stop push
                log.exception("push decider step failed; retrying shortly")
                busy = 0
            if busy:
                continue
            if time.monotonic() - self._vectors_refreshed_at >= VECTORS_REFRESH_S:
                self._vectors_refreshed_at = time.monotonic()
                try:
                    self.vectors.refresh(BACKGROUND_MODEL_ROWS)  # catch up while idle
                except Exception:  # noqa: BLE001
                    log.exception("could not refresh the push user vectors")
            wait = self._idle_wait()
            if self.vectors.pending:
                wait = min(wait, max(0.001, VECTORS_REFRESH_S - (time.monotonic() - self._vectors_refreshed_at)))
            self._wake.wait(wait)
            self._wake.clear()

    def _idle_wait(self) -> float:
        wait = self.settings.push_poll_s
        due = self.triggers.next_due()
        if due is not None:
            wait = min(wait, max(0.0, due - self.clock.now()))
        return max(wait, 0.001)

    def step(self) -> int:
        """One decider pass: item changes, new events, due triggers, digests, calibration.
        Returns how much work it found (0: idle)."""
        work = self._take_items()
        work += self._read_events()
        if self.config.digest.enabled and self.clock.now() - self._digest_scan_at >= DIGEST_SCAN_S:
            work += self._schedule_digests()
        work += self._decide_due()
        if time.monotonic() - self._calibration_checked_at >= CALIBRATION_CHECK_S:
            self._calibration_checked_at = time.monotonic()
            self._check_calibration()
        return work

    def _take_items(self) -> int:
        with self._items_lock:
            records, self._changed_items = self._changed_items, []
        if records:
            latest = {r.item_id: r for r in records}  # the last upsert of an item wins
            self._reconcile_items(list(latest.values()), notify=True)
        return len(records)

    def _reconcile_items(self, records: list[ItemRecord], notify: bool) -> None:
        now = self.clock.now()
        attribute = self.config.price_drop.price_attribute
        popularity = self.engine.state.popularity

        def engaged(item_id: str) -> bool:
            key = self.view.item_key(item_id)
            return key is not None and popularity.engaged(key)

        for start in range(0, len(records), 5000):
            chunk = records[start:start + 5000]
            with self.db.transaction() as db:
                before: dict[str, ItemState] = {}
                ids = [r.item_id for r in chunk]
                for part in range(0, len(ids), 500):
                    piece = ids[part:part + 500]
                    for item_id, available, price in db.execute(
                            f"SELECT item_id, available, price FROM push_items WHERE item_id IN "
                            f"({','.join('?' * len(piece))})", piece):
                        before[item_id] = ItemState(bool(available), price)
                changes = [r for r in chunk if r.item_id not in before or before[r.item_id]
                           != ItemState(r.available, price_of(r, attribute))]
                if notify:
                    TriggerQueue.add(db, item_triggers(self.config, before, changes, now, engaged))
                db.executemany("INSERT INTO push_items (item_id, available, price) VALUES (?, ?, ?) "
                               "ON CONFLICT (item_id) DO UPDATE SET available = excluded.available, "
                               "price = excluded.price",
                               [(r.item_id, int(r.available), price_of(r, attribute)) for r in changes])

    def _read_events(self) -> int:
        cursor = int(self.db.meta("event_cursor", "0") or 0)
        batch = self.engine.store.events_after(cursor, EVENTS_PER_STEP)
        if not batch:
            return 0
        carts, timers = event_triggers(self.config, batch, self.clock.now())
        with self.db.transaction() as db:
            TriggerQueue.add(db, carts)
            TriggerQueue.rearm(db, timers)
            set_meta(db, "event_cursor", str(batch[-1][0]))
        return len(batch)

    def _decide_due(self) -> int:
        due = self.triggers.due(self.clock.now(), TRIGGERS_PER_STEP)
        for trigger in due:
            self.decide(trigger)
        return len(due)

    def decide(self, trigger: Trigger) -> dict[str, Any]:
        """Turn one trigger into outbox rows (or nothing), in one transaction with marking it done."""
        started = time.perf_counter()
        now = self.clock.now()
        self.preferences.refresh()  # consent changed through any process or node holds at once
        try:
            proposals, outcome = self._propose(trigger, now)
        except Exception as error:  # noqa: BLE001 - a trigger that cannot be decided is closed, not retried forever
            log.exception("push trigger %s %s failed", trigger.kind, trigger.key)
            proposals, outcome = [], {"error": f"{type(error).__name__}: {error}"}
        campaign_budget = trigger.payload.get("request", {}).get("budget") if trigger.kind == "campaign" else None
        rows = self._apply_policy(trigger, proposals, now, campaign_budget)
        counts = Counter(row.status for row in rows)
        outcome = {**outcome, "proposed": len(proposals), **{k: int(v) for k, v in counts.items()}}
        if "skipped" in outcome:
            self._skips[f"{trigger.kind}:{outcome['skipped']}"] += 1
        with self.db.transaction() as db:
            outcome["new"] = Outbox.add(db, rows)
            TriggerQueue.finish(db, trigger, self.clock.now(), outcome)
            if trigger.kind == "campaign":
                db.execute("UPDATE push_campaigns SET decided_at = ? WHERE id = ?", (self.clock.now(), trigger.key))
        if self.metrics is not None:
            self.metrics.decided(trigger.kind, rows, time.perf_counter() - started)
        if self.worker is not None and any(r.status == "scheduled" and r.due_at <= self.clock.now() + 1 for r in rows):
            self.worker.wake()
        if self.copywriter is not None:
            later = [(r.id, r.user_id, r.item_id) for r in rows
                     if r.status == "scheduled" and r.item_id and r.due_at >= self.clock.now() + COPY_LEAD_S]
            if later:
                self.copywriter(later)
        return outcome

    # -- what each trigger proposes -------------------------------------------------------

    def _propose(self, trigger: Trigger, now: float) -> tuple[list[Proposal], dict[str, Any]]:
        kind = trigger.kind
        if kind in ("item_created", "back_in_stock", "price_drop"):
            return self._propose_item(trigger, now)
        if kind == "cart_abandoned":
            return self._propose_cart(trigger, now)
        if kind == "next_best":
            return self._propose_next_best(trigger, now)
        if kind == "digest":
            return self._propose_digest(trigger, now)
        if kind == "campaign":
            return self._propose_campaign(trigger, now)
        return [], {"skipped": f"unknown trigger {kind}"}

    def _propose_item(self, trigger: Trigger, now: float) -> tuple[list[Proposal], dict[str, Any]]:
        if trigger.kind == "item_created":
            return self._propose_new_items(trigger, now)
        item_id = trigger.payload["item_id"]
        record = self.view.item(item_id)
        key = self.view.item_key(item_id)
        if record is None or key is None or not record.available:
            return [], {"skipped": "item unknown or unavailable"}
        config = self.config.of(trigger.kind)
        title = record.title or item_id
        since = now - getattr(config, "lookback_s", 30 * DAY)
        users = self.view.interested(key, since, INTEREST_TYPES)
        targets = [t for t in self.targeter.score_users(item_id, users) if t.p >= config.min_p]
        targets = sorted(targets, key=lambda t: (-t.p, t.user_id))[: config.max_users]
        if trigger.kind == "back_in_stock":
            head, body = f"Back in stock: {title}", f"'{title}' is available again."
        else:
            old, new = trigger.payload["old_price"], trigger.payload["price"]
            head, body = f"Price drop: {title}", f"'{title}' now costs {new:g} (was {old:g})."
        expires = now + config.expires_s
        return ([Proposal(t.user_id, item_id, t.p, config.min_p, now, expires, head, body) for t in targets],
                {"audience": len(targets)})

    def _propose_new_items(self, trigger: Trigger, now: float) -> tuple[list[Proposal], dict[str, Any]]:
        config = self.config.item_created
        arrived = trigger.payload.get("item_ids") or [trigger.payload["item_id"]]
        if len(arrived) > config.max_items:
            return [], {"skipped": f"catalogue load ({len(arrived)} new items at once)"}
        records = {i: self.view.item(i) for i in arrived}
        items = [i for i, r in records.items() if r is not None and r.available and self.view.item_key(i) is not None]
        if not items:
            return [], {"skipped": "item unknown or unavailable"}
        similarity = (config.min_similarity if config.min_similarity is not None
                      else self.settings.cold_start_min_similarity)
        targets, chosen = self._best_per_user(items, config.max_users, config.min_p, similarity)
        proposals = []
        for target in targets:
            record = records[chosen[target.user_id]]
            assert record is not None
            proposals.append(Proposal(target.user_id, record.item_id, target.p, config.min_p, now,
                                      now + config.expires_s, f"New: {record.title or record.item_id}",
                                      _snippet(record)))
        return proposals, {"audience": len(targets), "items": len(items)}

    def _best_per_user(self, items: list[str], max_users: int, min_p: float, min_similarity: float | None = None,
                       user_ids: list[str] | None = None) -> tuple[list[Target], dict[str, str]]:
        """The best `max_users` users over several items, each with the item they are likeliest
        to engage with (`user_ids`: exactly these users, whatever their p)."""
        best: dict[str, Target] = {}
        chosen: dict[str, str] = {}
        for item_id in items:
            found = (self.targeter.score_users(item_id, user_ids) if user_ids is not None
                     else self.targeter.audience(item_id, max_users, min_p, min_similarity))
            for target in found:
                if target.user_id not in best or target.p > best[target.user_id].p:
                    best[target.user_id], chosen[target.user_id] = target, item_id
        ranked = sorted(best.values(), key=lambda t: (-t.p, t.user_id))
        return (ranked if user_ids is not None else ranked[:max_users]), chosen

    def _propose_cart(self, trigger: Trigger, now: float) -> tuple[list[Proposal], dict[str, Any]]:
        config = self.config.cart_abandoned
        user_id, item_id, cart_at = trigger.payload["user_id"], trigger.payload["item_id"], trigger.payload["cart_at"]
        key = self.view.item_key(item_id)
        record = self.view.item(item_id)
        if key is None or record is None or not record.available:
            return [], {"skipped": "item unknown or unavailable"}
        steps = self.view.steps(user_id)
        if any(s.item == key and s.type == "purchase" and s.timestamp >= cart_at for s in steps):
            return [], {"skipped": "purchased"}
        if any(s.item == key and s.type == "cart" and s.timestamp > cart_at for s in steps):
            return [], {"skipped": "carted again later"}
        p = self.targeter.score_items(user_id, [item_id])[0]
        seen = {s.item for s in steps}
        items, body = [item_id], f"'{record.title or item_id}' is still in your cart."
        for other in self.view.complements(key, 5):
            other_key = self.view.item_key(other)
            if other_key is None or other_key in seen:
                continue
            p_other = self.targeter.score_items(user_id, [other])[0]
            if p_other >= config.complement_min_p:
                items.append(other)
                body += f" Goes well with '{self.view.title(other_key)}'."
            break
        title = f"Still thinking about '{record.title or item_id}'?"
        return [Proposal(user_id, item_id, p, config.min_p, now, now + config.expires_s, title, body, items)], {}

    def _propose_next_best(self, trigger: Trigger, now: float) -> tuple[list[Proposal], dict[str, Any]]:
        config = self.config.next_best
        user_id = trigger.payload["user_id"]
        steps = self.view.steps(user_id)
        if not steps:
            return [], {"skipped": "unknown user"}
        if steps[-1].timestamp + config.session_gap_s > now + 1e-6:
            return [], {"skipped": "still in session"}
        recommended = self.view.recommend(user_id, 1).items
        if not recommended:
            return [], {"skipped": "nothing to recommend"}
        top = recommended[0]
        p = self.targeter.score_items(user_id, [top.item_id])[0]
        if p < config.min_p:
            return [], {"skipped": "low_p", "p": round(p, 4)}
        title = f"Picked for you: {top.title or top.item_id}"
        return [Proposal(user_id, top.item_id, p, config.min_p, now, now + config.expires_s, title, top.reason)], {}

    def _propose_digest(self, trigger: Trigger, now: float) -> tuple[list[Proposal], dict[str, Any]]:
        config = self.config.digest
        user_id = trigger.payload["user_id"]
        recommended = self.view.recommend(user_id, config.n).items
        if not recommended:
            return [], {"skipped": "nothing to recommend"}
        items = [r.item_id for r in recommended]
        p = self.targeter.score_items(user_id, items[:1])[0]
        body = "; ".join(r.title or r.item_id for r in recommended)
        return [Proposal(user_id, items[0], p, config.min_p, float(trigger.payload["at"]), float(trigger.payload["at"])
                         + config.expires_s, "Picked for you today", body, items)], {}

    def _propose_campaign(self, trigger: Trigger, now: float) -> tuple[list[Proposal], dict[str, Any]]:
        config = self.config.campaign
        request = CampaignRequest.model_validate(trigger.payload["request"])
        records = {i: self.view.item(i) for i in request.items()}
        items = [i for i, r in records.items() if r is not None and r.available and self.view.item_key(i) is not None]
        if not items:
            return [], {"skipped": "no known, available item"}
        audience = request.audience
        if audience.user_ids is not None:
            min_p = 0.0
            targets, chosen_item = self._best_per_user(items, 0, 0.0, None, list(dict.fromkeys(audience.user_ids)))
        else:
            max_users = audience.max_users or config.max_users
            min_p = audience.min_p if audience.min_p is not None else config.min_p
            targets, chosen_item = self._best_per_user(items, max_users, min_p)
        expires = request.expires_at or now + config.expires_s
        proposals = []
        for target in targets:
            item_id = chosen_item[target.user_id]
            record = records[item_id]
            assert record is not None
            want = self._send_time(target.user_id, request.send_time, now)
            proposals.append(Proposal(target.user_id, item_id, target.p, min_p, want, expires,
                                      request.title or record.title or item_id, request.body or _snippet(record),
                                      campaign_id=trigger.key))
        return proposals, {"audience": len(targets)}

    def _send_time(self, user_id: str, send_time: str | float, now: float) -> float:
        if send_time == "now":
            return now
        if send_time == "optimal":
            tz = self.preferences.for_policy(user_id).timezone
            hour = self.vectors.best_hour(user_id, tz, self.settings.push_default_send_hour, now)
            return next_at_hour(now, hour, tz)
        return max(float(send_time), now)

    def _schedule_digests(self) -> int:
        """Digest triggers for users whose best local hour is now or starts within the next
        scan (each user at most once per local day: the key is the user and that day).
        Vectorised over the cached rows: one pass per time zone in use."""
        now = self.clock.now()
        self._digest_scan_at = now
        config, vectors = self.config.digest, self.vectors
        vectors.refresh(0)  # activity rows only; the behaviour model's can wait
        horizon = DIGEST_SCAN_S + 60.0
        ids, hours = vectors.active_since(now - config.active_days * DAY)
        by_zone: dict[str, list[int]] = defaultdict(list)
        for i, user_id in enumerate(ids):
            preferences = self.preferences.for_policy(user_id)
            if not preferences.opt_out and preferences.types.get("digest", True):
                by_zone[preferences.timezone].append(i)
        triggers = []
        for tz, members in by_zone.items():
            offset = local(now, tz).utcoffset()
            shift = round(offset.total_seconds() / 3600) if offset is not None else 0
            best = (np.argmax(hours[members], axis=1) + shift) % 24  # UTC hour h is local hour h + shift
            moment = local(now, tz)
            soon = local(now + horizon, tz).hour
            for i, hour in zip(members, best.tolist(), strict=True):
                if hour != moment.hour and hour != soon:
                    continue
                at = next_at_hour(now, hour, tz)
                if at - now <= horizon:
                    day = local(at, tz).date().isoformat()
                    triggers.append(Trigger("digest", f"{ids[i]}|{day}", now, max(now, at - horizon),
                                            {"user_id": ids[i], "at": at}))
        if not triggers:
            return 0
        with self.db.transaction() as db:
            return TriggerQueue.add(db, triggers)

    # -- the policy -----------------------------------------------------------------------

    def _apply_policy(self, trigger: Trigger, proposals: list[Proposal], now: float,
                      campaign_budget: int | None, dry_run: bool = False) -> list[NewNotification]:
        if not proposals:
            return []
        settings = self.settings
        users = [p.user_id for p in proposals]
        history = self.outbox.history(users, now - max(settings.push_same_item_days, 8) * DAY)
        budget = Budget(settings.push_max_per_hour, self.outbox.hour_count, campaign_budget)
        rows = []
        for proposal in sorted(proposals, key=lambda p: (-p.p, p.user_id)):
            preferences = self.preferences.for_policy(proposal.user_id)
            past = history[proposal.user_id]
            candidate = Candidate(proposal.user_id, proposal.item_id, trigger.kind, proposal.p, proposal.min_p,
                                  proposal.want_at, proposal.expires_at, proposal.campaign_id)
            decision = self.policy.decide(candidate, preferences, past, now, self._channel_for(proposal.user_id),
                                          budget)
            scheduled = decision.status == "scheduled"
            if scheduled:
                past.append(Past(decision.due_at, trigger.kind, proposal.item_id, "scheduled"))
            key = self.view.item_key(proposal.item_id)
            reason = self.view.reason(proposal.user_id, key) if scheduled and key is not None else ""
            rows.append(NewNotification(
                id=uuid.uuid4().hex, dedupe_key=f"{trigger.kind}|{trigger.key}|{trigger.due_at:.3f}|{proposal.user_id}",
                user_id=proposal.user_id, item_id=proposal.item_id, items=proposal.items, type=trigger.kind,
                status=decision.status, created_at=now, due_at=_finite(decision.due_at, proposal.expires_at),
                expires_at=proposal.expires_at, p=proposal.p, title=proposal.title, body=proposal.body,
                reason=reason, channel=decision.channel,
                suppressed_reason=None if scheduled else decision.reason, campaign_id=proposal.campaign_id,
                trigger_id=trigger.id))
        return rows

    def _channel_for(self, user_id: str) -> Any:
        def choose(preferred: list[str]) -> str | None:
            for name in preferred:
                channel = self.channels.get(name)
                if channel is not None and channel.reaches(user_id):
                    return name
            return None

        return choose

    # -- calibration ----------------------------------------------------------------------

    def _stored_calibration(self) -> Calibrator | None:
        raw = self.db.meta("calibration")
        if raw is None:
            return None
        try:
            return Calibrator.from_json(raw)
        except (ValueError, KeyError, TypeError):
            log.warning("the stored push calibration does not fit this version; using the default until a refit")
            return None

    def save_calibration(self, calibrator: Calibrator) -> None:
        with self.db.transaction() as db:
            set_meta(db, "calibration", calibrator.to_json())
        self.calibrator = self.targeter.calibrator = calibrator

    def _check_calibration(self) -> None:
        """Pick up a calibration fitted by another process; start a fit in the background
        (`kairos push calibrate`, at lower priority) when there is none, or it was fitted with
        another behaviour model than the one serving, and the log is big enough."""
        stored = self._stored_calibration()
        if stored is not None and stored.to_json() != self.calibrator.to_json():
            self.calibrator = self.targeter.calibrator = stored
        job = self._calibration_job
        if job is not None and (job.poll() is None or time.monotonic() - self._calibration_started < 3600):
            return  # running, or tried within the hour
        served = self.engine.sequential_version
        current = self.calibrator.fitted and self.calibrator.meta.get("behaviour_model") == served
        if current or self.engine.state.events_applied < self.settings.push_calibration_min_events:
            return
        command = [sys.executable, "-m", "kairos", "push", "calibrate", "--db", str(self.engine.store_path()),
                   "--quiet"]
        self._calibration_started = time.monotonic()
        self._calibration_job = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
            preexec_fn=(lambda: os.nice(10)) if os.name == "posix" else None)  # noqa: PLW1509

    # -- delivery hooks -------------------------------------------------------------------

    def _finished(self, batch: list[Notification], outcomes: list[Outcome]) -> None:
        self.tail.wake()
        if self.metrics is not None:
            self.metrics.delivered(batch, outcomes, self.clock.now())

    # -- what the API offers --------------------------------------------------------------

    def get_preferences(self, user_id: str) -> EffectivePreferences:
        return self.preferences.get(user_id)

    def set_preferences(self, user_id: str, preferences: PushPreferences) -> EffectivePreferences:
        return self.preferences.set(user_id, preferences, self.clock.now())

    def webhook(self) -> WebhookConfig | None:
        return read_config(self.db)

    def set_webhook(self, config: WebhookConfig | None) -> None:
        write_config(self.db, config, self.clock.now())
        webhook = self.channels["webhook"]
        assert isinstance(webhook, WebhookChannel)
        webhook.invalidate()  # this process's decisions see it at once (others within a second)

    def create_campaign(self, request: CampaignRequest) -> tuple[Campaign, bool]:
        """Record a campaign and its trigger in one transaction; (campaign, created). The same
        id again changes nothing."""
        campaign_id = request.id or uuid.uuid4().hex
        now = self.clock.now()
        payload = request.model_dump(mode="json", exclude_none=True)
        payload["id"] = campaign_id
        with self.db.transaction() as db:
            created = db.execute("INSERT INTO push_campaigns (id, request, created_at) VALUES (?, ?, ?) "
                                 "ON CONFLICT DO NOTHING",
                                 (campaign_id, dumps(payload), now)).rowcount == 1
            if created:
                TriggerQueue.add(db, [Trigger("campaign", campaign_id, now, now, {"request": payload})])
        self._wake.set()
        campaign = self.campaign(campaign_id)
        assert campaign is not None
        return campaign, created

    def campaign(self, campaign_id: str) -> Campaign | None:
        rows = self.db.query("SELECT request, created_at, decided_at FROM push_campaigns WHERE id = ?", (campaign_id,))
        if not rows:
            return None
        request, created_at, decided_at = rows[0]
        counts = self.outbox.counts(campaign_id)
        return Campaign(id=campaign_id, state="decided" if decided_at is not None else "pending",
                        created_at=created_at, decided_at=decided_at, request=json.loads(request),
                        counts=counts["by_status"], suppressed=counts["suppressed"], opened=counts["opened"],
                        clicked=counts["clicked"])

    def campaigns(self, limit: int = 100) -> list[Campaign]:
        ids = [row[0] for row in self.db.query("SELECT id FROM push_campaigns ORDER BY created_at DESC LIMIT ?",
                                               (limit,))]
        return [c for c in (self.campaign(i) for i in ids) if c is not None]

    def preview(self, item_id: str, n: int) -> list[PreviewEntry]:
        """Who an item_created-like notification of this item would reach, with p, reason and
        what the policy would do; nothing is written or sent."""
        now = self.clock.now()
        targets = self.targeter.audience(item_id, n, 0.0)
        trigger = Trigger("campaign", f"preview-{uuid.uuid4().hex}", now, now)
        proposals = [Proposal(t.user_id, item_id, t.p, 0.0, now, now + self.config.campaign.expires_s, "", "")
                     for t in targets]
        rows = self._apply_policy(trigger, proposals, now, None)
        key = self.view.item_key(item_id)
        return [PreviewEntry(user_id=r.user_id, p=r.p, reason=r.reason or (self.view.reason(r.user_id, key)
                                                                          if key is not None else ""),
                             decision="scheduled" if r.status == "scheduled" else (r.suppressed_reason or r.status),
                             due_at=r.due_at if r.status == "scheduled" else None, channel=r.channel)
                for r in rows]

    def notifications(self, user_id: str, status: str | None, limit: int) -> list[Notification]:
        return self.outbox.for_user(user_id, status, limit)

    def feedback(self, notification_id: str, action: str) -> Notification | None:
        """Record what the user did with a notification, and the matching event (a click is a
        click on the item). The same action twice records one event."""
        current = self.outbox.get(notification_id)
        if current is None:
            return None
        if current.status not in ("delivered", "sending"):
            raise NotDelivered(f"notification {notification_id} was never delivered (it is {current.status})")
        result = self.outbox.record_feedback(notification_id, action, self.clock.now())
        assert result is not None
        notification, new = result
        if new:
            self.view.ingest([Event(user_id=notification.user_id, item_id=notification.item_id,
                                    type=FEEDBACK_EVENTS[action], context={"notification_id": notification_id})])
        return notification

    def stats(self) -> dict[str, Any]:
        latencies: dict[str, list[float]] = defaultdict(list)
        for kind, seconds in self.triggers.latencies():
            latencies[kind].append(seconds)
        rows = self.db.query("SELECT kind, status, count(*) FROM push_triggers GROUP BY kind, status")
        triggers: dict[str, dict[str, int]] = defaultdict(dict)
        for kind, status, count in rows:
            triggers[kind][status] = count
        return {
            **self.outbox.counts(),
            "delivery_latency": self.outbox.delivery_latency(),
            "decision_latency": {kind: {"p50_s": round(float(np.percentile(v, 50)), 4),
                                        "p99_s": round(float(np.percentile(v, 99)), 4), "n": len(v)}
                                 for kind, v in latencies.items()},
            "triggers": dict(triggers),
            "skipped": dict(self._skips),
            "calibration": describe(self.calibrator),
            "user_vectors": {"users": len(self.vectors), "pending": self.vectors.pending},
            "webhook_configured": self.webhook() is not None,
            "email_configured": bool(self.settings.push_smtp_host),
        }


def _snippet(record: ItemRecord) -> str:
    text = record.text.strip() or ", ".join(record.categories)
    return text if len(text) <= 160 else text[:157].rstrip() + "..."


def _finite(due_at: float, expires_at: float) -> float:
    return due_at if np.isfinite(due_at) else expires_at


__all__ = ["NotDelivered", "PushService"]
