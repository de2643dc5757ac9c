"""The Python client against a real `kairos serve` on 127.0.0.1: typed answers, typed
errors, retries (a real proxy that loses an answer, a real rate limit, a closed port),
live streams, and the async client."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from typing import Any

import pytest
from conftest import free_port
from test_push_e2e import QUIET, SHOP, wait_for

from kairos.client import (
    AsyncKairos,
    Conflict,
    Forbidden,
    InvalidRequest,
    Kairos,
    NotFound,
    RateLimited,
    Retries,
    Unauthorized,
    Unavailable,
)
from kairos.experiments.schema import ExperimentReport
from kairos.push.schema import Campaign, Notification
from kairos.schema import Item, Recommendations

pytestmark = pytest.mark.e2e

FAST = Retries(attempts=4, backoff_s=0.05, max_backoff_s=1.0)


def stock(kairos: Kairos) -> None:
    kairos.put_items([Item(item_id=i, title=t, categories=[c]) for i, t, c in SHOP])
    events = [{"user_id": f"c{u}", "item_id": i, "type": "click"} for u in range(6)
              for i in ("espresso", "grinder", "beans")]
    events += [{"user_id": f"t{u}", "item_id": i, "type": "click"} for u in range(6) for i in ("teapot", "sencha")]
    assert kairos.send_events(events, batch_size=7) == len(events)  # 5 batches, each with its own key


def test_every_part_of_the_api_answers_with_its_own_models(server_factory: Any) -> None:
    server = server_factory(env=QUIET)
    with Kairos(server.url) as kairos:
        assert kairos.health().status == "ok"
        stock(kairos)
        listed = kairos.recommendations("c0", n=3, exclude_seen=False)
        assert isinstance(listed, Recommendations) and len(listed.items) == 3
        assert {item.item_id for item in listed.items} <= {i for i, _, _ in SHOP}
        assert kairos.get_item("teapot").title == "Teapot"
        assert kairos.similar("espresso", n=2).items[0].item_id in {"grinder", "beans"}
        assert kairos.search("green tea", n=1).items[0].item_id == "sencha"
        kairos.put_user("c0", {"text": "loves strong coffee"})
        assert {e.item_id for e in kairos.get_user("c0").recent} == {"espresso", "grinder", "beans"}

        assert kairos.set_preferences("c0", {"max_per_day": 3}).max_per_day == 3
        assert kairos.get_preferences("c0").customised is True
        assert kairos.channels().inbox == {"enabled": True}
        assert kairos.preview("sencha", n=3)
        campaign = kairos.create_campaign({"item_id": "sencha", "audience": {"user_ids": ["c0"]}})
        assert isinstance(campaign, Campaign) and campaign.id.startswith("campaign-")
        assert campaign.id in [c.id for c in kairos.campaigns()]
        sent = kairos.notifications("c0", status="all").notifications
        assert sent and all(isinstance(n, Notification) for n in sent)
        delivered = wait_for(lambda: kairos.notifications("c0").notifications)  # the in-app inbox
        assert kairos.feedback(delivered[0].notification_id, "opened").opened_at is not None
        assert kairos.push_stats().by_type.get("campaign", 0) >= 1

        assert kairos.models().model_version.startswith("online")
        kairos.create_experiment({"id": "exp-1", "arms": [{"name": "a", "traffic": 0.5},
                                                          {"name": "b", "traffic": 0.5}]})
        assert [e.id for e in kairos.experiments().experiments] == ["exp-1"]
        report = kairos.stop_experiment("exp-1", winner="b")
        assert isinstance(report, ExperimentReport) and report.status == "stopped" and report.winner == "b"

        assert kairos.delete_item("grinder").available is False
        assert kairos.forget_user("t5").events_deleted == 2
        with pytest.raises(NotFound):
            kairos.get_user("t5")


def test_errors_carry_the_api_code_and_the_field(server_factory: Any) -> None:
    server = server_factory(env={"KAIROS_API_KEYS": "read+ingest:k-app,admin:k-admin"})
    with Kairos(server.url, api_key="k-app", retries=FAST) as kairos:
        with pytest.raises(NotFound) as missing:
            kairos.get_item("nothing-here")
        assert missing.value.status == 404 and missing.value.code == "not_found"
        good = {"user_id": "u1", "item_id": "i1", "type": "click"}
        with pytest.raises(InvalidRequest) as invalid:
            kairos.send_events([good, {**good, "type": "teleport"}])
        assert invalid.value.status == 422 and invalid.value.field == "events[1].type"
        assert invalid.value.details[0]["index"] == 1
        with pytest.raises(NotFound):
            kairos.get_user("u1")  # the batch was rejected whole
        with pytest.raises(Forbidden) as forbidden:
            kairos.forget_user("u1")
        assert forbidden.value.code == "forbidden"
    with Kairos(server.url, api_key="", retries=FAST) as stranger, pytest.raises(Unauthorized):
        stranger.recommendations("u1")
    with Kairos(server.url, api_key="k-admin", retries=FAST) as admin:
        admin.create_experiment({"id": "e1", "arms": [{"name": "a", "traffic": 0.5}, {"name": "b", "traffic": 0.5}]})
        with pytest.raises(Conflict) as conflict:
            admin.create_experiment({"id": "e2", "arms": [{"name": "a", "traffic": 0.5},
                                                          {"name": "b", "traffic": 0.5}]})
        assert conflict.value.status == 409


class LosingProxy:
    """A real TCP proxy on 127.0.0.1 that forwards requests to the server and, while
    `lose` > 0, drops the server's answer and closes the connection: the request arrived,
    the client never hears of it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.lose = 0
        self.lost = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        server = socket.create_connection(("127.0.0.1", self.target_port))

        def upstream() -> None:
            try:
                while data := client.recv(65536):
                    server.sendall(data)
            except OSError:
                pass

        threading.Thread(target=upstream, daemon=True).start()
        try:
            while data := server.recv(65536):
                if self.lose > 0:
                    self.lose -= 1
                    self.lost += 1
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            for end in (client, server):  # shut down first: the other thread is still reading it
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()

    def close(self) -> None:
        self.listener.close()


def test_a_batch_whose_answer_was_lost_is_stored_once(server_factory: Any) -> None:
    server = server_factory()
    proxy = LosingProxy(server.port)
    try:
        with Kairos(f"http://127.0.0.1:{proxy.port}", retries=FAST) as kairos:
            kairos.put_items([{"item_id": "a"}, {"item_id": "b"}])
            proxy.lose = 1
            events = [{"user_id": "lost", "item_id": item, "type": "click"} for item in ("a", "b", "a")]
            assert kairos.send_events(events) == 3  # sent twice: the first answer never came back
            assert proxy.lost == 1
            assert len(kairos.get_user("lost").recent) == 3  # stored once
            proxy.lose = 1
            with pytest.raises(Unavailable):  # starting training is not retried where it may have arrived
                kairos.train({"epochs": 1})
    finally:
        proxy.close()


def test_rate_limits_are_waited_out_and_a_closed_port_is_unavailable(server_factory: Any) -> None:
    server = server_factory(env={"KAIROS_RATE_LIMIT": "4", "KAIROS_RATE_BURST": "2"})
    with Kairos(server.url, retries=Retries(attempts=6, backoff_s=0.05, max_backoff_s=2.0)) as patient:
        started = time.monotonic()
        for _ in range(8):
            patient.recommendations("u1", n=1)
        assert time.monotonic() - started >= 0.8  # 8 requests at 4/s past a burst of 2: waited, not refused
    with Kairos(server.url, retries=Retries(attempts=1)) as hasty:
        with pytest.raises(RateLimited) as limited:
            for _ in range(10):
                hasty.recommendations("u1", n=1)
        assert limited.value.retry_after is not None and limited.value.retry_after > 0
    started = time.monotonic()
    with Kairos(f"http://127.0.0.1:{free_port()}", retries=FAST) as nowhere, pytest.raises(Unavailable):
        nowhere.health()
    assert time.monotonic() - started < 5


def test_live_streams_yield_the_api_models(server_factory: Any) -> None:
    server = server_factory(env=QUIET)
    with Kairos(server.url) as kairos:
        stock(kairos)
        with kairos.notification_stream("t0") as stream:  # subscribed once entered
            kairos.create_campaign({"id": "tea", "item_id": "sencha", "audience": {"user_ids": ["t0"]}})
            notification = next(iter(stream))
        assert isinstance(notification, Notification) and notification.campaign_id == "tea"
        with kairos.recommendation_stream("newbie", n=3) as lists:
            seen = iter(lists)
            first = next(seen)
            kairos.send_events([{"user_id": "newbie", "item_id": "teapot", "type": "click"}])
            second = next(seen)
        assert isinstance(first, Recommendations) and first.items != second.items


def test_the_async_client(server_factory: Any) -> None:
    # The new items' own trigger would race the campaign to a0 (who clicked a tea item) with the same item.
    no_new_item_push = json.dumps({"next_best": {"enabled": False}, "digest": {"enabled": False},
                                   "item_created": {"enabled": False}})
    server = server_factory(env={**QUIET, "KAIROS_PUSH_TRIGGERS": no_new_item_push})

    async def scenario() -> None:
        async with AsyncKairos(server.url, retries=FAST) as kairos:
            await kairos.put_items([Item(item_id=i, title=t, categories=[c]) for i, t, c in SHOP])
            events = [{"user_id": f"a{u}", "item_id": "teapot", "type": "click"} for u in range(30)]
            assert await kairos.send_events(events, batch_size=8) == 30
            answers = await asyncio.gather(*(kairos.recommendations(f"a{u}", n=2) for u in range(10)))
            assert all(isinstance(a, Recommendations) and len(a.items) == 2 for a in answers)
            with pytest.raises(NotFound):
                await kairos.get_item("nope")
            async with kairos.notification_stream("a0") as stream:
                campaign = await kairos.create_campaign({"id": "async", "item_id": "sencha",
                                                         "audience": {"user_ids": ["a0"]}})
                assert campaign.counts.get("suppressed", 0) == 0, campaign

                async def first() -> Notification:
                    async for notification in stream:
                        return notification
                    raise AssertionError("the stream ended")

                try:
                    notification = await asyncio.wait_for(first(), timeout=20)
                except TimeoutError:
                    sent = await kairos.notifications("a0", status="all")
                    raise AssertionError(f"nothing streamed in 20 s; a0's notifications: {sent}") from None
                assert notification.campaign_id == "async"

    asyncio.run(asyncio.wait_for(scenario(), timeout=60))
