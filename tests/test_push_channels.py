"""Delivery through real receivers: a local HTTP server for the webhook, a local SMTP
server (aiosmtpd) for email; retries, dead letters, and a worker that dies mid-send."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kairos.clock import SimulatedClock
from kairos.config import Settings
from kairos.push.channels import EmailChannel, InboxChannel, WebhookChannel
from kairos.push.channels.webhook import write_config
from kairos.push.database import PushDatabase, SQLitePushDatabase
from kairos.push.outbox import NewNotification, Outbox
from kairos.push.schema import WebhookConfig
from kairos.push.worker import DeliveryWorker

from conftest import Receiver, free_port

T0 = 1_750_000_000.0
SECRET = "s3cret"
PAYLOAD_KEYS = {"notification_id", "user_id", "item_id", "type", "title", "body", "reason", "p", "campaign_id",
                "created_at"}


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock(T0)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PushDatabase]:
    """The outbox on SQLite, or on a real PostgreSQL (push/postgres.py)."""
    if request.param == "sqlite":
        found: PushDatabase = SQLitePushDatabase(tmp_path / "push.db", "NORMAL")
    else:
        from kairos.push.postgres import PostgresPushDatabase

        found = PostgresPushDatabase(request.getfixturevalue("postgres_url"))
    yield found
    found.close()


SETTINGS = Settings(push_retry_base_s=1.0, push_retry_max_s=60.0, push_webhook_max_attempts=3,
                    push_webhook_timeout_s=0.5, push_lease_s=30.0)


def enqueue(db: PushDatabase, count: int = 1, channel: str = "webhook", due: float = T0) -> list[str]:
    rows = [NewNotification(id=f"n{k}", dedupe_key=f"d{k}", user_id=f"u{k}", item_id="sku-1", type="campaign",
                            status="scheduled", created_at=T0, due_at=due, expires_at=T0 + 86_400, p=0.25,
                            title="Trail shoes", body="Light, grippy.", reason="because you clicked 'Socks'",
                            channel=channel, campaign_id="c1") for k in range(count)]
    with db.transaction() as connection:
        Outbox.add(connection, rows)
    return [r.id for r in rows]


def worker(db: PushDatabase, clock: SimulatedClock, settings: Settings = SETTINGS, **channels: Any) -> DeliveryWorker:
    chosen = channels or {"webhook": WebhookChannel(db, settings, clock), "inbox": InboxChannel()}
    return DeliveryWorker(Outbox(db), settings, clock, chosen)


def test_a_webhook_is_signed_keyed_and_carries_the_contract(db: PushDatabase, clock: SimulatedClock,
                                                           receiver: Receiver) -> None:
    write_config(db, WebhookConfig(url=receiver.url, secret=SECRET), T0)
    (nid,) = enqueue(db)
    assert worker(db, clock).run_once() == 1
    (request,) = receiver.requests
    body = request["body"]
    assert request["headers"]["Idempotency-Key"] == nid
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert request["headers"]["X-Kairos-Signature"] == expected
    payload = json.loads(body)
    assert set(payload) == PAYLOAD_KEYS
    assert payload["notification_id"] == nid and payload["p"] == 0.25 and payload["campaign_id"] == "c1"
    row = Outbox(db).get(nid)
    assert row is not None and row.status == "delivered" and row.delivered_at == T0 and row.attempts == 1


def test_5xx_and_timeouts_are_retried_with_backoff_4xx_is_not(db: PushDatabase, clock: SimulatedClock,
                                                             receiver: Receiver) -> None:
    write_config(db, WebhookConfig(url=receiver.url, secret=SECRET), T0)
    outbox = Outbox(db)
    (nid,) = enqueue(db)
    receiver.statuses = [503]
    deliver = worker(db, clock)
    deliver.run_once()
    row = outbox.get(nid)
    assert row.status == "scheduled" and row.attempts == 1 and "HTTP 503" in row.last_error
    assert T0 + 0.5 <= row.due_at <= T0 + 1.5  # base 1 s, jittered
    assert deliver.run_once() == 0  # not due yet
    clock.set(row.due_at)
    receiver.delay_s = 1.0  # longer than the 0.5 s timeout
    deliver.run_once()
    row = outbox.get(nid)
    assert row.status == "scheduled" and row.attempts == 2 and "Timeout" in row.last_error
    assert row.due_at - clock.now() >= 1.0  # the second delay is twice the first (jittered)
    receiver.delay_s = 0.0
    clock.set(row.due_at)
    deliver.run_once()
    assert outbox.get(nid).status == "delivered"
    keys = {r["headers"]["Idempotency-Key"] for r in receiver.requests}
    assert keys == {nid} and len(receiver.requests) == 3  # every attempt carries the same key


def test_a_4xx_fails_at_once_and_5xx_goes_dead_after_the_attempts(db: PushDatabase, clock: SimulatedClock,
                                                                 receiver: Receiver) -> None:
    write_config(db, WebhookConfig(url=receiver.url, secret=SECRET, max_attempts=2), T0)
    outbox = Outbox(db)
    first, second = enqueue(db, 2)
    receiver.statuses = [400, 500]  # whichever arrives first is refused for good
    deliver = worker(db, clock)
    deliver.run_once()
    statuses = {outbox.get(first).status, outbox.get(second).status}
    assert statuses == {"failed", "scheduled"}
    retried = first if outbox.get(first).status == "scheduled" else second
    receiver.statuses = [500]
    clock.set(outbox.get(retried).due_at)
    deliver.run_once()
    dead = outbox.get(retried)
    assert dead.status == "dead" and dead.attempts == 2 and "after 2 attempts" in dead.last_error
    assert outbox.counts()["by_status"] == {"failed": 1, "dead": 1}


def test_a_worker_that_dies_mid_send_loses_nothing(db: PushDatabase, clock: SimulatedClock,
                                                  receiver: Receiver) -> None:
    """Claimed (sending, with a lease), sent, and the worker dies before recording it: once
    the lease is over another worker sends it again, with the same idempotency key."""
    write_config(db, WebhookConfig(url=receiver.url, secret=SECRET), T0)
    outbox = Outbox(db)
    ids = enqueue(db, 3)
    claimed = outbox.claim(T0, "dead-worker", 10, SETTINGS.push_lease_s)
    assert [n.notification_id for n in claimed] == ids
    other = worker(db, clock)
    assert other.run_once() == 0  # leased: nobody else sends them
    clock.advance(SETTINGS.push_lease_s + 1)
    assert other.run_once() == 3
    assert {outbox.get(i).status for i in ids} == {"delivered"}
    assert sorted(r["headers"]["Idempotency-Key"] for r in receiver.requests) == ids


def test_workers_on_postgresql_pass_rows_another_holds_and_never_share_one(postgres_url: str) -> None:
    """Two connections, as two nodes' workers: while one holds rows in an open claim the
    other claims the rest at once (SKIP LOCKED: no wait), and no row goes to both."""
    import threading

    from kairos.push.postgres import PostgresPushDatabase

    first, second = PostgresPushDatabase(postgres_url), PostgresPushDatabase(postgres_url)
    try:
        ids = enqueue(first, 40)
        holding, release = threading.Event(), threading.Event()
        held: list[str] = []

        def hold() -> None:  # locks the 10 earliest rows and keeps its transaction open
            with first.transaction(exclusive=False) as db:
                held.extend(row[0] for row in db.execute(
                    f"SELECT id FROM push_notifications ORDER BY seq LIMIT 10{first.skip_locked}"))
                holding.set()
                release.wait(10)

        thread = threading.Thread(target=hold)
        thread.start()
        assert holding.wait(5)
        second.db.execute("SET lock_timeout = '2s'")  # a claim that waited would fail, not hang
        claimed = Outbox(second).claim(T0, "b", 100, 30.0)
        release.set()
        thread.join()
        assert sorted(n.notification_id for n in claimed) == sorted(set(ids) - set(held))
        rest = Outbox(first).claim(T0, "a", 100, 30.0)
        assert sorted(n.notification_id for n in rest) == sorted(held)
    finally:
        first.close()
        second.close()


def test_expired_notifications_are_not_sent(db: PushDatabase, clock: SimulatedClock, receiver: Receiver) -> None:
    write_config(db, WebhookConfig(url=receiver.url, secret=SECRET), T0)
    (nid,) = enqueue(db)
    clock.advance(2 * 86_400)
    assert worker(db, clock).run_once() == 0
    row = Outbox(db).get(nid)
    assert (row.status, row.suppressed_reason) == ("expired", "not_sent_in_time") and not receiver.requests


def test_email_through_a_real_smtp_server(db: PushDatabase, clock: SimulatedClock) -> None:
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    received: list[Any] = []

    class Keep(Message):
        def handle_message(self, message: Any) -> None:
            received.append(message)

    controller = Controller(Keep(), hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        settings = SETTINGS.model_copy(update={"push_smtp_host": "127.0.0.1", "push_smtp_port": controller.port,
                                               "push_smtp_from": "Shop <shop@example.com>"})
        channel = EmailChannel(settings, clock, lambda user: f"{user}@example.com" if user == "u0" else None)
        assert channel.reaches("u0") and not channel.reaches("u1")
        (nid,) = enqueue(db, 1, channel="email")
        assert worker(db, clock, settings, email=channel).run_once() == 1
        (message,) = received
        assert message["To"] == "u0@example.com" and message["Subject"] == "Trail shoes"
        assert message["Message-ID"] == f"<{nid}@kairos>"
        assert "because you clicked 'Socks'" in message.get_payload()
        assert Outbox(db).get(nid).status == "delivered"
    finally:
        controller.stop()


def test_the_inbox_delivers_at_once_and_feeds_the_live_tail(db: PushDatabase, clock: SimulatedClock) -> None:
    from kairos.push.live import LiveHub, SentTail

    outbox = Outbox(db)
    hub = LiveHub()
    tail = SentTail(outbox, hub, 0.1)
    ids = enqueue(db, 2, channel="inbox")
    assert worker(db, clock).run_once() == 2
    delivered = outbox.sent_after(tail.position)
    assert sorted(n.notification_id for _, n in delivered) == ids
    assert tail.forward() == 0  # nobody subscribed: read past, nothing kept
    assert tail.position == delivered[-1][0]


def test_a_scheduled_notifications_text_can_be_rewritten_until_it_is_claimed(db: PushDatabase) -> None:
    """The language model's copy replaces the template only while the row waits."""
    first, second = enqueue(db, 2, due=T0 + 600)
    outbox = Outbox(db)
    assert outbox.set_body(first, "Because you liked Socks, these shoes fit your runs.")
    assert outbox.get(first).body == "Because you liked Socks, these shoes fit your runs."
    outbox.claim(T0 + 601, "w1", 10, 30.0)  # now sending: the text is final
    assert not outbox.set_body(second, "too late")
    assert outbox.get(second).body == "Light, grippy."
