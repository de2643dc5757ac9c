"""Locked doors, end to end: API keys with scopes, rate limits, body limits and hostile
ids against a real `kairos serve` on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import database_rows, rows_mentioning

pytestmark = pytest.mark.e2e

T0 = 1_750_000_000
READER, WRITER, ADMIN = "reader-key-0123456789", "writer-key-0123456789", "admin-key-0123456789"
KEYS = f"read:{READER},read+ingest:{WRITER},admin:{ADMIN}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def events(user: str, n: int, item: str = "sku-1") -> dict[str, Any]:
    return {"events": [{"user_id": user, "item_id": item, "type": "click", "timestamp": T0 + k}
                       for k in range(n)]}


def stored_events(server: Any) -> int:
    return int(httpx.get(f"{server.url}/healthz").json()["events"])


def test_keys_and_scopes(server_factory: Any) -> None:
    server = server_factory(env={"KAIROS_API_KEYS": KEYS})
    with server.client() as client:
        assert client.get("/healthz").status_code == 200  # open: probes carry no key
        assert client.get("/openapi.json").status_code == 200

        missing = client.get("/v1/recommendations/u1")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert missing.json()["error"]["code"] == "unauthorized"
        wrong = client.get("/v1/recommendations/u1", headers=bearer("not-a-key"))
        assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]["message"]

        # A read key may not write, and its refused batch changes nothing.
        refused = client.post("/v1/events", json=events("u1", 3), headers=bearer(READER))
        assert refused.status_code == 403
        assert refused.json()["error"]["details"]["required"] == "ingest"
        assert stored_events(server) == 0

        assert client.put("/v1/items/sku-1", json={"title": "Trail shoe"},
                          headers={"X-API-Key": WRITER}).status_code == 200
        assert client.post("/v1/events", json=events("u1", 3), headers=bearer(WRITER)).json() == {"accepted": 3}
        assert client.get("/v1/recommendations/u1", headers={"X-API-Key": READER}).status_code == 200

        # Deleting a user, models and experiments are admin's; admin holds every scope.
        assert client.delete("/v1/users/u1", headers=bearer(WRITER)).status_code == 403
        assert client.get("/v1/models", headers=bearer(READER)).status_code == 403
        assert client.get("/v1/experiments", headers=bearer(WRITER)).status_code == 403
        assert client.get("/metrics", headers=bearer(READER)).status_code == 403
        assert client.get("/v1/models", headers=bearer(ADMIN)).status_code == 200
        assert client.get("/v1/recommendations/u1", headers=bearer(ADMIN)).status_code == 200
        assert client.delete("/v1/users/u1", headers=bearer(ADMIN)).json()["events_deleted"] == 3
    server.stop()
    assert server.process is not None and server.process.stdout is not None
    log = server.process.stdout.read().decode()
    assert all(key not in log for key in (READER, WRITER, ADMIN, "not-a-key"))


def kairos(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kairos", *args], capture_output=True, text=True,
                          env=env, check=True)


def test_keys_created_and_revoked_while_serving(server_factory: Any, tmp_path: Path) -> None:
    db = tmp_path / "keys.db"
    server = server_factory(db)
    with server.client() as client:
        assert client.get("/v1/recommendations/u1").status_code == 200  # no key anywhere: open
        created = json.loads(kairos("keys", "create", "--scope", "read", "--name", "shop-frontend",
                                    "--db", str(db), "--json").stdout)
        key = created["key"]
        assert created["scopes"] == ["read"] and key.startswith("kairos_")
        stored = Path(str(db) + ".keys.json").read_text()
        assert key not in stored and created["id"] in stored  # hashed on disk

        def status(headers: dict[str, str]) -> int:
            return client.get("/v1/recommendations/u1", headers=headers).status_code

        assert wait_until(lambda: status({}) == 401)  # the running server read the new file
        assert status(bearer(key)) == 200
        assert client.post("/v1/events", json=events("u1", 1), headers=bearer(key)).status_code == 403

        listed = kairos("keys", "list", "--db", str(db)).stdout
        assert created["id"] in listed and key not in listed
        kairos("keys", "revoke", created["id"], "--db", str(db))
        assert wait_until(lambda: status(bearer(key)) == 401)
        assert status({}) == 401  # revoking the last key leaves the doors locked, not open


def wait_until(check: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_request_rate_limit_answers_429_with_retry_after(server_factory: Any) -> None:
    server = server_factory(env={"KAIROS_RATE_LIMIT": "2", "KAIROS_RATE_BURST": "5"})
    with server.client() as client:
        answers = [client.get("/v1/recommendations/u1") for _ in range(12)]
        codes = [a.status_code for a in answers]
        assert codes[:5] == [200] * 5 and 429 in codes
        limited = next(a for a in answers if a.status_code == 429)
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["code"] == "rate_limited"
        assert client.get("/healthz").status_code == 200  # probes are never limited


def test_one_users_event_flood_is_refused_whole_and_others_flow(server_factory: Any) -> None:
    server = server_factory(env={"KAIROS_USER_EVENT_RATE_LIMIT": "1", "KAIROS_USER_EVENT_BURST": "100"})
    with server.client() as client:
        assert client.post("/v1/events", json=events("flooder", 90)).status_code == 200
        flood = {"events": events("flooder", 20)["events"] + events("bystander", 5)["events"]}
        refused = client.post("/v1/events", json=flood)
        assert refused.status_code == 429
        body = refused.json()["error"]
        assert body["code"] == "rate_limited" and "flooder" in body["message"]
        assert body["details"]["users"] == ["flooder"] and int(refused.headers["retry-after"]) >= 1
        assert stored_events(server) == 90  # the refused batch changed nothing
        assert client.post("/v1/events", json=events("bystander", 5)).json() == {"accepted": 5}


def test_body_size_limit(server_factory: Any) -> None:
    server = server_factory(env={"KAIROS_MAX_BODY_BYTES": "4096"})
    with server.client() as client:
        big = events("u1", 100)
        declared = client.post("/v1/events", json=big)
        assert declared.status_code == 413 and declared.json()["error"]["code"] == "payload_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
            data = json.dumps(big).encode()
            for start in range(0, len(data), 1024):
                yield data[start:start + 1024]

        streamed = client.post("/v1/events", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        assert stored_events(server) == 0
        assert client.post("/v1/events", json=events("u1", 3)).json() == {"accepted": 3}


def test_hostile_ids_and_query_strings_get_json_4xx(server_factory: Any) -> None:
    server = server_factory()
    with server.client() as client:
        for path in ("/v1/items/a%1Ab", "/v1/users/a%17b", "/v1/items/a%00b", "/v1/recommendations/a%0Ab"):
            if "recommendations" in path:
                response = client.get(path)
            else:
                response = client.put(path, json={"title": "x"} if "items" in path else {"text": "x"})
            assert response.status_code == 422, (path, response.text)
            error = response.json()["error"]
            assert error["details"][0]["field"] in ("item_id", "user_id")
            assert "printable" in error["message"]
        assert stored_events(server) == 0 and httpx.get(f"{server.url}/healthz").json()["items"] == 0

        status, body = raw_get(server.port, "/v1/search?q=" + "x" * 30_000)
        assert status == 414, body
        assert json.loads(body)["error"]["code"] == "uri_too_long"
        status, body = raw_get(server.port, "/v1/search?q=" + "x" * 100_000)  # past the parser's limit
        assert status == 400, body
        assert json.loads(body)["error"]["code"] == "bad_request"


def raw_get(port: int, target: str) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


EXPECTED = {"traversal path id": 404, "deeply nested context": 400, "invalid JSON": 400,
            "XML body": 415, "multipart body": 415}


def test_hostile_inputs_each_get_a_clear_4xx_and_change_nothing(server_factory: Any) -> None:
    """The issue's list of hostile inputs, as an outside client would send them."""
    server = server_factory()
    one = {"user_id": "u1", "item_id": "sku-1", "type": "click", "timestamp": T0}
    nested = '{"k": ' * 2_000 + '"deep"' + "}" * 2_000  # past any JSON parser's recursion limit
    cases: list[tuple[str, str, str, dict[str, Any]]] = [
        # (label, method, path, request keywords)
        ("10,001-event batch", "POST", "/v1/events", {"json": events("u1", 10_001)}),
        ("1 MB title", "PUT", "/v1/items/sku-1", {"json": {"title": "x" * 1_000_000}}),
        ("1 MB id", "POST", "/v1/events", {"json": {"events": [{**one, "user_id": "u" * 1_000_000}]}}),
        ("1 MB context", "POST", "/v1/events", {"json": {"events": [{**one, "context": {"note": "x" * 1_000_000}}]}}),
        ("NaN value", "POST", "/v1/events",
         {"content": b'{"events": [{"user_id": "u1", "item_id": "i", "type": "rating", "value": NaN}]}'}),
        ("Infinity timestamp", "POST", "/v1/events",
         {"content": b'{"events": [{"user_id": "u1", "item_id": "i", "type": "click", "timestamp": Infinity}]}'}),
        ("NaN in context", "POST", "/v1/events",
         {"content": b'{"events": [{"user_id": "u1", "item_id": "i", "type": "click", "context": {"x": NaN}}]}'}),
        ("NUL in body id", "POST", "/v1/events", {"json": {"events": [{**one, "item_id": "a\x00b"}]}}),
        ("control character in path id", "PUT", "/v1/items/a%1Bb", {"json": {"title": "x"}}),
        ("dot-segment path id", "PUT", "/v1/items/%2E%2E", {"json": {"title": "x"}}),
        ("traversal path id", "PUT", "/v1/items/..%2F..%2Fetc%2Fpasswd", {"json": {"title": "x"}}),
        ("dot-segment body id", "POST", "/v1/items", {"json": {"items": [{"item_id": "..", "title": "x"}]}}),
        ("deeply nested context", "POST", "/v1/events",
         {"content": ('{"events": [{"user_id": "u1", "item_id": "i", "type": "click", "context": %s}]}'
                      % nested).encode()}),
        ("invalid JSON", "POST", "/v1/events", {"content": b'{"events": [{"user_id": '}),
        ("not an object", "POST", "/v1/events", {"content": b'[1, 2, 3]'}),
        ("XML body", "POST", "/v1/events", {"content": b"<events/>", "headers": {"content-type": "application/xml"}}),
        ("multipart body", "PUT", "/v1/items/sku-1", {"files": {"f": ("a.txt", b"title")}}),
    ]
    with server.client() as client:
        for label, method, path, request in cases:
            if "content" in request and "headers" not in request:
                request = {**request, "headers": {"content-type": "application/json"}}
            response = client.request(method, path, **request)
            assert 400 <= response.status_code < 500, (label, response.status_code, response.text[:300])
            error = response.json()["error"]
            assert error["code"] and error["message"], label
            if response.status_code == 422:  # names the field, e.g. "events[0].context: ..."
                assert error["details"][0]["field"] in error["message"], (label, error)
            assert response.status_code == EXPECTED.get(label, 422), (label, response.status_code, error)
            assert len(response.content) < 20_000, (label, "an error body must not echo the input")
        health = httpx.get(f"{server.url}/healthz").json()
        assert health["events"] == 0 and health["items"] == 0 and health["users"] == 0


def test_a_forgotten_user_is_in_no_table_and_no_file(server_factory: Any, tmp_path: Path) -> None:
    """Every trace a user leaves (events, profile and stated text, push preferences and
    notifications, experiment exposures and outcomes, the change feed) is gone after
    DELETE: counted by searching every text column of every table, and every file the
    server keeps beside the database (the vector index), for the id and the text."""
    db = tmp_path / "forget.db"
    ghost, text = "ghost-7f3a9", "private interests: rare orchids"
    server = server_factory(db)
    with server.client() as client:
        client.post("/v1/items", json={"items": [{"item_id": f"sku-{k}", "title": f"orchid {k}"} for k in range(8)]})
        client.post("/v1/experiments", json={"id": "exp", "metric": "click", "arms": [
            {"name": "a", "config": {}, "traffic": 0.5}, {"name": "b", "config": {"diversity": 0.3}, "traffic": 0.5}]})
        client.put(f"/v1/users/{ghost}", json={"text": text})
        client.put(f"/v1/users/{ghost}/push", json={"timezone": "Europe/Paris"})
        client.post("/v1/events", json=events(ghost, 3))
        listed = client.get(f"/v1/recommendations/{ghost}").json()
        client.post("/v1/events", json={"events": [{"user_id": ghost, "item_id": listed["items"][0]["item_id"],
                                                    "type": "click", "request_id": listed["request_id"]}]})
        client.post("/v1/push/campaigns", json={"item_id": "sku-3", "audience": {"user_ids": [ghost]}})
        client.post("/v1/events", json=events("bystander", 2))
        time.sleep(1.0)  # exposures are flushed within 0.5 s
        assert rows_mentioning(server, ghost) > 5  # the search finds what is there
        assert client.delete(f"/v1/users/{ghost}").status_code == 200
    server.stop()
    assert rows_mentioning(server, ghost) == 0
    assert rows_mentioning(server, text) == 0
    assert database_rows(server, "SELECT count(*) FROM events WHERE user_id = 'bystander'")[0][0] == 2
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.name.startswith("forget.db"):
            assert ghost.encode() not in path.read_bytes(), path


def test_pseudonymised_ids_never_reach_the_database(server_factory: Any, tmp_path: Path) -> None:
    db = tmp_path / "pseudo.db"
    key = "a-secret-the-platform-keeps"
    server = server_factory(db, env={"KAIROS_PSEUDONYMISE_KEY": key})
    alice = "alice@example.com"
    with server.client() as client:
        client.post("/v1/items", json={"items": [{"item_id": f"sku-{k}", "title": f"item {k}"} for k in range(6)]})
        assert client.put(f"/v1/users/{alice}", json={"text": "tea"}).json()["user_id"] == alice
        client.post("/v1/events", json=events(alice, 3))
        assert client.put(f"/v1/users/{alice}/push", json={"timezone": "Europe/Paris"}).json()["user_id"] == alice
        assert client.get(f"/v1/users/{alice}").json()["event_count"] == 3
        listed = client.get(f"/v1/recommendations/{alice}").json()
        assert listed["user_id"] == alice and listed["items"]
        client.post("/v1/push/campaigns", json={"item_id": "sku-4", "audience": {"user_ids": [alice]}})
        assert client.get(f"/v1/users/{alice}/notifications", params={"status": "all"}).json()["user_id"] == alice
    server.stop()
    kept = kairos("pseudonym", alice, env={"KAIROS_PSEUDONYMISE_KEY": key}).stdout.strip()
    assert kept.startswith("p-") and kept != alice
    assert rows_mentioning(server, alice) == 0
    assert rows_mentioning(server, kept) >= 5  # events, profile, preferences, notification, campaign
    restarted = server_factory(db, env={"KAIROS_PSEUDONYMISE_KEY": key})
    with restarted.client() as client:
        assert client.get(f"/v1/users/{alice}").json()["event_count"] == 3  # the same key finds them again
        assert client.delete(f"/v1/users/{alice}").json() == {"user_id": alice, "events_deleted": 3}
    restarted.stop()
    assert rows_mentioning(restarted, kept) == 0
