"""Push through a real `kairos serve` on 127.0.0.1: a real webhook receiver, a real SSE
client (httpx-sse), feedback, bad input, and kill -9 in the middle of delivery."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from conftest import Receiver, Server

pytestmark = pytest.mark.e2e

SECRET = "hook-secret"
# No default quiet hours: what the tests check must not depend on the hour they run at.
QUIET = {"KAIROS_PUSH_DEFAULT_QUIET_HOURS": '["00:00", "00:00"]', "KAIROS_PUSH_POLL_S": "0.1", "KAIROS_PUSH_MIN_GAP_S": "0", "KAIROS_PUSH_MAX_PER_DAY": "20",
         "KAIROS_PUSH_MAX_PER_TYPE_PER_DAY": "10",
         "KAIROS_PUSH_TRIGGERS": json.dumps({"next_best": {"enabled": False}, "digest": {"enabled": False},
                                             "item_created": {"max_users": 5}})}
SHOP = [("espresso", "Espresso machine", "coffee"), ("grinder", "Coffee grinder", "coffee"),
        ("beans", "Espresso beans", "coffee"), ("teapot", "Teapot", "tea"), ("sencha", "Green tea", "tea")]


def stock(client: httpx.Client) -> None:
    items = [{"item_id": i, "title": t, "categories": [c]} for i, t, c in SHOP]
    assert client.post("/v1/items", json={"items": items}).status_code == 200
    events = [{"user_id": f"c{u}", "item_id": i, "type": "click"} for u in range(6)
              for i in ("espresso", "grinder", "beans")]
    events += [{"user_id": f"t{u}", "item_id": i, "type": "click"} for u in range(6) for i in ("teapot", "sencha")]
    assert client.post("/v1/events", json={"events": events}).json() == {"accepted": len(events)}


def wait_for(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


class StreamReader:
    """A real SSE client in a thread, keeping what it receives."""

    def __init__(self, url: str) -> None:
        self.events: list[Any] = []
        self.ready = threading.Event()
        self.client = httpx.Client(timeout=httpx.Timeout(5.0, read=None))

        def read() -> None:
            try:
                with connect_sse(self.client, "GET", url) as source:
                    self.ready.set()
                    for event in source.iter_sse():
                        self.events.append(event)
            except (httpx.HTTPError, RuntimeError):
                pass  # the test closed the client, or the server went away

        threading.Thread(target=read, daemon=True).start()
        assert self.ready.wait(10)

    def of(self, kind: str) -> list[Any]:
        return [e for e in self.events if e.event == kind]

    def close(self) -> None:
        self.client.close()


def test_push_end_to_end(server_factory: Any, receiver: Receiver) -> None:
    server: Server = server_factory(env=QUIET)
    with server.client() as client:
        stock(client)
        put = client.put("/v1/push/channels/webhook", json={"url": receiver.url, "secret": SECRET})
        assert put.status_code == 200 and put.json()["webhook"]["secret"] == "***"
        stream = StreamReader(f"{server.url}/v1/users/c0/notifications/stream")
        try:
            wait_for(lambda: stream.of("ready"))
            # A new coffee item: Kairos picks the coffee drinkers and posts each a signed webhook.
            created = client.put("/v1/items/frother", json={"title": "Milk frother", "categories": ["coffee"],
                                                             "text": "Froths milk for your espresso."})
            assert created.status_code == 200
            def frother() -> list[dict[str, Any]]:
                return [r for r in receiver.requests if json.loads(r["body"])["item_id"] == "frother"]

            wait_for(lambda: len(frother()) >= 5)
            users = set()
            for request in frother():
                body = request["body"]
                signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                assert request["headers"]["X-Kairos-Signature"] == signature
                payload = json.loads(body)
                assert request["headers"]["Idempotency-Key"] == payload["notification_id"]
                assert payload["type"] == "item_created"
                users.add(payload["user_id"])
            assert users <= {f"c{u}" for u in range(6)} and len(users) == 5
            # A campaign to c0 by name: it streams to c0's open SSE connection the moment it is sent.
            campaign = client.post("/v1/push/campaigns", json={"id": "spring", "item_id": "sencha",
                                                               "audience": {"user_ids": ["c0"]}})
            assert campaign.status_code == 201 and campaign.json()["state"] == "decided"
            assert client.post("/v1/push/campaigns", json={"id": "spring", "item_id": "teapot"}).status_code == 200
        finally:
            time.sleep(0.3)
            stream.close()
        inbox = wait_for(lambda: client.get("/v1/users/c0/notifications").json()["notifications"])
        streamed = {json.loads(e.data)["notification_id"] for e in stream.of("notification")}
        assert {n["notification_id"] for n in inbox if n["status"] == "delivered"} <= streamed | {
            n["notification_id"] for n in inbox if n["type"] == "campaign"}
        sent = [n for n in inbox if n["type"] == "campaign"] or [
            n for n in client.get("/v1/users/c0/notifications", params={"status": "all"}).json()["notifications"]
            if n["type"] == "campaign"]
        assert sent and sent[0]["campaign_id"] == "spring"
        # Feedback: recorded once, and a click is an event on the item.
        first = inbox[0]
        clicked = client.post(f"/v1/notifications/{first['notification_id']}/feedback", json={"action": "clicked"})
        assert clicked.status_code == 200 and clicked.json()["clicked_at"] is not None
        again = client.post(f"/v1/notifications/{first['notification_id']}/feedback", json={"action": "clicked"})
        assert again.json()["clicked_at"] == clicked.json()["clicked_at"]
        recent = client.get("/v1/users/c0").json()["recent"]
        assert [(e["item_id"], e["type"]) for e in recent].count((first["item_id"], "push_click")) == 1
        stats = client.get("/v1/push/stats").json()
        assert stats["by_status"]["delivered"] >= 5 and stats["clicked"] == 1
        assert stats["decision_latency"]["item_created"]["p99_s"] < 1.0
        metrics = client.get("/metrics").text
        assert 'kairos_push_deliveries_total{channel="webhook",result="delivered"}' in metrics
        assert "kairos_push_outbox{" in metrics


def test_bad_push_input_is_a_4xx_naming_the_field_and_changes_nothing(server_factory: Any) -> None:
    server: Server = server_factory(env=QUIET)
    with server.client() as client:
        stock(client)
        before = client.get("/v1/users/c1/push").json()
        cases = [({"timezone": "Mars/Olympus"}, "timezone"), ({"quiet_hours": {"start": "25:00", "end": "08:00"}},
                 "quiet_hours.start"), ({"max_per_day": -1}, "max_per_day"), ({"channels": ["fax"]}, "channels[0]"),
                 ({"types": {"spam": False}}, "types.spam"), ({"opt_out": "maybe"}, "opt_out")]
        for body, field in cases:
            response = client.put("/v1/users/c1/push", json=body)
            assert response.status_code == 422, body
            assert response.json()["error"]["details"][0]["field"].startswith(field), response.json()
        assert client.get("/v1/users/c1/push").json() == before
        hook = client.put("/v1/push/channels/webhook", json={"url": "ftp://example.com/hook", "secret": "x"})
        assert hook.status_code == 422 and hook.json()["error"]["details"][0]["field"] == "url"
        assert client.get("/v1/push/channels").json()["webhook"] is None
        for body, field in [({"item_id": "nope"}, "item_id"), ({"item_id": "beans", "audience": {"max_users": -3}},
                            "audience.max_users"), ({"item_id": "beans", "audience": {"user_ids": ["c1"],
                                                                                      "max_users": 3}}, "audience"),
                            ({"audience": {}}, "body"), ({"item_id": "beans", "send_time": "whenever"}, "send_time")]:
            response = client.post("/v1/push/campaigns", json=body)
            assert response.status_code == 422, body
            assert response.json()["error"]["details"][0]["field"].startswith(field), response.json()
        assert client.get("/v1/push/campaigns").json() == []
        assert client.post("/v1/notifications/nope/feedback", json={"action": "opened"}).status_code == 404
        assert client.post("/v1/notifications/nope/feedback", json={"action": "loved"}).status_code == 422
        assert client.get("/v1/users/c1/notifications", params={"status": "lost"}).status_code == 422
        assert client.get("/v1/push/campaigns/nope").status_code == 404


def test_the_recommendation_list_streams_after_each_event(server_factory: Any) -> None:
    server: Server = server_factory(env=QUIET)
    with server.client() as client:
        stock(client)
        stream = StreamReader(f"{server.url}/v1/recommendations/newbie/stream?n=3")
        try:
            first = wait_for(lambda: stream.of("recommendations"))
            assert json.loads(first[0].data)["user_id"] == "newbie"
            sent = time.monotonic()
            client.post("/v1/events", json={"events": [{"user_id": "newbie", "item_id": "teapot", "type": "click"}]})
            lists = wait_for(lambda: stream.of("recommendations")[1:], timeout=5)
            assert time.monotonic() - sent < 2.0
            items = [i["item_id"] for i in json.loads(lists[0].data)["items"]]
            assert items[0] == "sencha" and "teapot" not in items  # tea drinkers' next pick, seen one excluded
        finally:
            stream.close()


def test_kill_9_while_delivering_loses_nothing_and_sends_nothing_twice(server_factory: Any,
                                                                      receiver: Receiver) -> None:
    """The bench (benchmarks/push.py) does this 5 times with 10,000; here once with 300."""
    env = {**QUIET, "KAIROS_PUSH_LEASE_S": "1", "KAIROS_PUSH_CONCURRENCY": "4", "KAIROS_PUSH_BATCH": "20",
           "KAIROS_PUSH_MIN_GAP_S": "0"}
    server: Server = server_factory(env=env)
    users = [f"user{k}" for k in range(300)]
    receiver.delay_s = 0.01
    with server.client() as client:
        stock(client)
        client.put("/v1/push/channels/webhook", json={"url": receiver.url, "secret": SECRET})
        decided = client.post("/v1/push/campaigns", json={"id": "big", "item_id": "beans",
                                                          "audience": {"user_ids": users}}).json()
        assert decided["counts"] == {"scheduled": 300} or sum(decided["counts"].values()) == 300
        wait_for(lambda: len(receiver.requests) >= 40)
    server.kill()
    restarted = server_factory(db_path=server.db_path, env=env)
    with restarted.client() as client:
        wait_for(lambda: client.get("/v1/push/campaigns/big").json()["counts"].get("delivered") == 300, timeout=60)
    keys = [r["headers"]["Idempotency-Key"] for r in receiver.requests]
    assert len(set(keys)) == 300  # none lost
    payload_users = {json.loads(r["body"])["user_id"] for r in receiver.requests}
    assert payload_users == set(users)
    assert len(keys) - len(set(keys)) <= 20  # re-sent: at most the batch in flight at the kill


def test_a_separate_push_worker_delivers_and_the_server_streams_it(server_factory: Any, receiver: Receiver) -> None:
    import os
    import subprocess
    import sys

    env = {**QUIET, "KAIROS_PUSH_INLINE_WORKER": "false"}
    server: Server = server_factory(env=env)
    with server.client() as client:
        stock(client)
        client.put("/v1/push/channels/webhook", json={"url": receiver.url, "secret": SECRET})
        stream = StreamReader(f"{server.url}/v1/users/t1/notifications/stream")
        client.post("/v1/push/campaigns", json={"id": "w", "item_id": "beans", "audience": {"user_ids": ["t1", "t2"]}})
        time.sleep(0.5)
        assert client.get("/v1/push/campaigns/w").json()["counts"] == {"scheduled": 2}  # nobody delivers yet
        worker = subprocess.Popen([sys.executable, "-m", "kairos", "push-worker", "--db", str(server.db_path)],
                                  env={**os.environ, **server.env}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: client.get("/v1/push/campaigns/w").json()["counts"] == {"delivered": 2})
            assert {json.loads(r["body"])["user_id"] for r in receiver.requests} >= {"t1", "t2"}
            streamed = wait_for(lambda: stream.of("notification"), timeout=5)
            assert json.loads(streamed[0].data)["campaign_id"] == "w"
        finally:
            stream.close()
            worker.terminate()
            output = worker.communicate(timeout=20)[0].decode()
        assert worker.returncode == 0 and "delivered 2 notifications" in output
