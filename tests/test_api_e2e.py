"""End-to-end: a real `kairos serve` process on 127.0.0.1, a temporary database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import database_rows

pytestmark = pytest.mark.e2e

T0 = 1_750_000_000


def catalogue(client: httpx.Client) -> None:
    items = [
        {"item_id": f"sku-{i}", "title": f"Item {i}", "categories": ["shoes" if i < 5 else "books"]}
        for i in range(10)
    ]
    assert client.post("/v1/items", json={"items": items}).json() == {"upserted": 10}


def trail(user: str, items: list[str], start: int) -> list[dict[str, Any]]:
    return [
        {"user_id": user, "item_id": item, "type": "click", "timestamp": start + 60 * k}
        for k, item in enumerate(items)
    ]


def test_ingest_then_recommend_reflects_the_event(server_factory: Any) -> None:
    server = server_factory()
    with server.client() as client:
        catalogue(client)
        # Many users go sku-1 -> sku-7: a co-visitation the next request must use.
        events = [e for u in range(20) for e in trail(f"crowd{u}", ["sku-1", "sku-7"], T0 + u)]
        events += [e for u in range(30) for e in trail(f"fans{u}", ["sku-3"], T0 + u)]
        assert client.post("/v1/events", json={"events": events}).json() == {"accepted": 70}

        before = client.get("/v1/recommendations/u1", params={"n": 3}).json()
        assert before["items"][0]["item_id"] == "sku-3"  # trending for a stranger
        assert before["items"][0]["sources"][0] == "popular"

        click = {"events": [{"user_id": "u1", "item_id": "sku-1", "type": "click", "timestamp": T0 + 999}]}
        assert client.post("/v1/events", json=click).status_code == 200
        after = client.get("/v1/recommendations/u1", params={"n": 3}).json()
        assert after["items"][0]["item_id"] == "sku-7"
        assert after["items"][0]["sources"][0] == "covisit"
        assert "sku-1" not in [i["item_id"] for i in after["items"]]  # seen is excluded
        assert {"user_id", "items", "model_version", "request_id"} <= set(after)  # the fixed contract
        assert after["model_version"]

        shown = client.get("/v1/recommendations/u1", params={"n": 3, "exclude_seen": "false"}).json()
        assert "sku-1" in [i["item_id"] for i in shown["items"]]
        books = client.get("/v1/recommendations/u1", params={"n": 5, "category": "books"}).json()
        assert [i["item_id"] for i in books["items"]][0] == "sku-7"
        assert all(int(i["item_id"].split("-")[1]) >= 5 for i in books["items"])

        similar = client.get("/v1/items/sku-1/similar", params={"n": 3}).json()
        assert similar["items"][0]["item_id"] == "sku-7"

        assert client.delete("/v1/items/sku-7").json()["available"] is False
        gone = client.get("/v1/recommendations/u1", params={"n": 10}).json()
        assert "sku-7" not in [i["item_id"] for i in gone["items"]]


def test_a_batch_retried_with_its_idempotency_key_is_stored_once(server_factory: Any) -> None:
    server = server_factory()
    with server.client() as client:
        batch = {"events": trail("u1", ["sku-1", "sku-2", "sku-3"], T0)}
        key = {"Idempotency-Key": "3f1c9a10-batch-1"}
        first = client.post("/v1/events", json=batch, headers=key)
        retried = client.post("/v1/events", json=batch, headers=key)
        assert first.status_code == retried.status_code == 200
        assert first.json() == retried.json() == {"accepted": 3}
        other = client.post("/v1/events", json={"events": trail("u1", ["sku-4"], T0)}, headers=key)
        assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
        assert other.json()["error"]["details"][0]["field"] == "Idempotency-Key"
        bad = client.post("/v1/events", json=batch, headers={"Idempotency-Key": "two words"})
        assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "Idempotency-Key"
        assert client.post("/v1/events", json=batch).status_code == 200  # without a key: stored again
        assert database_rows(server, "SELECT count(*) FROM events") == [(6,)]
        assert len(client.get("/v1/users/u1").json()["recent"]) == 6


def test_curl_style_form_body_is_read_as_json(server_factory: Any) -> None:
    server = server_factory()
    with server.client() as client:
        form = {"content-type": "application/x-www-form-urlencoded"}
        put = client.put("/v1/items/sku-1", content='{"title":"Trail running shoes","categories":["shoes"]}', headers=form)
        assert put.status_code == 200 and put.json()["title"] == "Trail running shoes"
        post = client.post(
            "/v1/events", content='{"events":[{"user_id":"u1","item_id":"sku-1","type":"click"}]}', headers=form
        )
        assert post.json() == {"accepted": 1}


def test_bad_batch_is_rejected_whole_with_the_field_named(server_factory: Any) -> None:
    server = server_factory()
    with server.client() as client:
        batch = trail("u1", ["a", "b", "c"], T0)
        batch[2]["type"] = "teleport"
        response = client.post("/v1/events", json={"events": batch})
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["code"] == "validation_error"
        assert error["message"].startswith("events[2].type")
        assert error["details"][0]["index"] == 2
        assert client.get("/v1/users/u1").status_code == 404
        assert client.get("/v1/items/a").status_code == 404
        assert client.get("/healthz").json()["events"] == 0

        cases: list[tuple[dict[str, Any], str]] = [
            ({"events": [{"user_id": "u", "item_id": "i", "type": "rating"}]}, "events[0].value"),
            ({"events": [{"user_id": "", "item_id": "i", "type": "view"}]}, "events[0].user_id"),
            ({"events": [{"user_id": "u", "item_id": "x" * 257, "type": "view"}]}, "events[0].item_id"),
            ({"events": [{"user_id": "u\n", "item_id": "i", "type": "view"}]}, "events[0].user_id"),
            ({"events": [{"user_id": "u", "item_id": "i", "type": "view", "timestamp": "yesterday"}]},
             "events[0].timestamp"),
            ({"events": [{"user_id": "u", "item_id": "i", "type": "view", "timestamp": 1.7e12}]},
             "events[0].timestamp"),
            ({"events": [{"user_id": "u", "item_id": "i", "type": "view", "colour": "red"}]},
             "events[0].colour"),
            ({"events": []}, "events"),
            ({"events": [{"user_id": "u", "item_id": "i", "type": "view"}] * 10_001}, "events"),
        ]
        for body, field in cases:
            response = client.post("/v1/events", json=body)
            assert response.status_code == 422, body
            assert response.json()["error"]["details"][0]["field"] == field
        assert client.get("/healthz").json()["events"] == 0


def test_errors_are_json_and_never_500(server_factory: Any) -> None:
    server = server_factory()
    with server.client() as client:
        checks = [
            (client.get("/v1/items/nope"), 404, "not_found"),
            (client.delete("/v1/items/nope"), 404, "not_found"),
            (client.get("/v1/users/nope"), 404, "not_found"),
            (client.delete("/v1/users/nope"), 404, "not_found"),
            (client.get("/v1/items/nope/similar"), 404, "not_found"),
            (client.get("/v1/no-such-route"), 404, "not_found"),
            (client.post("/v1/recommendations/u1"), 405, "method_not_allowed"),
            (client.get("/v1/recommendations/u1", params={"n": 0}), 422, "validation_error"),
            (client.get("/v1/recommendations/u1", params={"n": "ten"}), 422, "validation_error"),
            (client.post("/v1/events", content=b"{not json", headers={"content-type": "application/json"}),
             400, "invalid_json"),
            (client.put("/v1/items/x", json={"title": "t", "categories": "shoes"}), 422, "validation_error"),
            (client.put("/v1/items/x", json={"text": "x" * 40_000}), 422, "validation_error"),
            (client.put("/v1/users/u1", json={"text": 5}), 422, "validation_error"),
        ]
        for response, status, code in checks:
            assert response.status_code == status, response.text
            assert response.json()["error"]["code"] == code
            assert response.json()["error"]["message"]


def test_restart_rebuilds_the_same_state(server_factory: Any, tmp_path: Path) -> None:
    db = tmp_path / "restart.db"
    first = server_factory(db)
    with first.client() as client:
        catalogue(client)
        events = [e for u in range(15) for e in trail(f"u{u}", [f"sku-{(u + k) % 10}" for k in range(4)], T0 + 3600 * u)]
        client.post("/v1/events", json={"events": events})
        client.put("/v1/users/u3", json={"attributes": {"country": "NZ"}, "text": "likes books"})
        before = snapshot(client)
    first.stop()
    second = server_factory(db)
    with second.client() as client:
        assert snapshot(client) == before


def snapshot(client: httpx.Client) -> dict[str, Any]:
    recs = {}
    for user in ("u0", "u3", "u9", "stranger"):
        body = client.get(f"/v1/recommendations/{user}", params={"n": 8}).json()
        recs[user] = [(i["item_id"], round(i["score"], 12), i["sources"]) for i in body["items"]]
    return {
        "recs": recs,
        "similar": client.get("/v1/items/sku-2/similar").json()["items"],
        "user": client.get("/v1/users/u3").json(),
        "health": {k: v for k, v in client.get("/healthz").json().items() if k not in ("rebuild_seconds", "process")},
    }


def test_kill_9_right_after_acknowledgement_loses_nothing(server_factory: Any, tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    server = server_factory(db)
    acknowledged = 0
    with server.client() as client:
        for batch in range(20):
            events = trail(f"u{batch}", [f"i{k}" for k in range(50)], T0 + batch)
            response = client.post("/v1/events", json={"events": events})
            assert response.status_code == 200
            acknowledged += response.json()["accepted"]
    server.kill()  # the very moment after the last 2xx
    restarted = server_factory(db)
    with restarted.client() as client:
        assert client.get("/healthz").json()["events"] == acknowledged == 1000
        assert client.get("/v1/users/u19").json()["event_count"] == 50


def test_forget_user_leaves_no_trace(server_factory: Any, tmp_path: Path) -> None:
    db = tmp_path / "forget.db"
    server = server_factory(db)
    with server.client() as client:
        catalogue(client)
        client.put("/v1/users/ghost", json={"text": "private interests"})
        client.post("/v1/events", json={"events": trail("ghost", ["sku-1", "sku-8"], T0)})
        client.post("/v1/events", json={"events": trail("other", ["sku-1"], T0 + 10)})
        assert client.get("/v1/items/sku-1/similar").json()["items"][0]["item_id"] == "sku-8"

        response = client.delete("/v1/users/ghost")
        assert response.json() == {"user_id": "ghost", "events_deleted": 2}
        assert client.get("/v1/users/ghost").status_code == 404
        similar = client.get("/v1/items/sku-1/similar").json()["items"]
        assert all(i["sources"] != ["covisit"] for i in similar)  # ghost's pair is gone
        assert "sku-8" not in [i["item_id"] for i in client.get("/v1/recommendations/other").json()["items"]
                               if "covisit" in i["sources"]]
        live = {k: v for k, v in client.get("/healthz").json().items() if k not in ("rebuild_seconds", "process")}
    server.stop()
    assert database_rows(server, "SELECT count(*) FROM events WHERE user_id = 'ghost'")[0][0] == 0
    assert database_rows(server, "SELECT count(*) FROM users WHERE user_id = 'ghost'")[0][0] == 0
    restarted = server_factory(db)
    with restarted.client() as client:
        rebuilt = {k: v for k, v in client.get("/healthz").json().items() if k not in ("rebuild_seconds", "process")}
        assert rebuilt == live


def test_metrics_count_requests_and_events(server_factory: Any) -> None:
    server = server_factory()
    with server.client() as client:
        client.post("/v1/events", json={"events": trail("u1", ["a", "b"], T0)})
        client.get("/v1/recommendations/u1")
        text = client.get("/metrics").text
        assert 'kairos_events_ingested_total{type="click"} 2.0' in text
        assert 'kairos_http_requests_total{method="GET",route="/v1/recommendations/{user_id}",status="200"} 1.0' in text
        assert "kairos_http_request_duration_seconds_bucket" in text
        assert client.get("/docs").status_code == 200
        assert "/v1/events" in client.get("/openapi.json").json()["paths"]


def test_language_model_endpoints(server_factory: Any) -> None:
    server = server_factory()
    with server.client() as client:
        items = [
            {"item_id": "tent", "title": "Two-person backpacking tent", "categories": ["outdoor"]},
            {"item_id": "bag", "title": "Down sleeping bag for cold nights", "categories": ["outdoor"]},
            {"item_id": "beans", "title": "Espresso coffee beans", "categories": ["coffee"]},
            {"item_id": "grinder", "title": "Burr coffee grinder", "categories": ["coffee"]},
        ]
        client.post("/v1/items", json={"items": items})
        found = client.get("/v1/search", params={"q": "coffee beans for espresso", "n": 2}).json()
        assert found["items"][0]["item_id"] == "beans"
        similar = client.get("/v1/items/tent/similar", params={"method": "semantic", "n": 1}).json()
        assert similar["items"][0]["item_id"] == "bag"
        assert client.get("/v1/items/tent/similar", params={"method": "magic"}).status_code == 422
        client.put("/v1/users/camper", json={"text": "camping trips in the mountains"})
        recs = client.get("/v1/recommendations/camper", params={"n": 2}).json()
        assert recs["items"][0]["item_id"] in {"tent", "bag"}
        assert recs["items"][0]["reason"].startswith("matches your interests")
        assert "semantic" in recs["sources"]
        assert client.get("/v1/recommendations/camper", params={"diversity": 2}).status_code == 422
        assert client.get("/v1/search").status_code == 422  # q is required
