"""Keys, scopes, buckets and error logging, in process."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from kairos.api.auth import KeyFile, KeyRing, Scope, parse_keys, required_scope
from kairos.api.errors import UnexpectedErrors, loggable
from kairos.api.limits import TokenBuckets


def test_parse_keys_and_scopes() -> None:
    keys = parse_keys("read+ingest:k1, admin:k2")
    assert [sorted(k.scopes) for k in keys] == [[Scope.ingest, Scope.read], [Scope.admin]]
    assert keys[1].allows(Scope.read) and keys[1].allows(Scope.ingest)  # admin holds every scope
    assert not keys[0].allows(Scope.admin)
    assert all("k1" not in repr(k) and "k2" not in repr(k) for k in keys)  # only hashes are held
    with pytest.raises(ValueError, match="pair 2") as error:
        parse_keys("read:k1,secret-without-scope")
    assert "secret" not in str(error.value)  # a config error never echoes a key
    with pytest.raises(ValueError, match="unknown scope 'write'"):
        parse_keys("write:k1")


def test_key_ring_matches_by_hash() -> None:
    ring = KeyRing(parse_keys("read:alpha,ingest:beta"))
    assert ring.enforced
    matched = ring.match("beta")
    assert matched is not None and matched.scopes == {Scope.ingest}
    assert ring.match("gamma") is None and ring.match("") is None
    assert not KeyRing().enforced


@pytest.mark.parametrize(("method", "path", "scope"), [
    ("GET", "/healthz", None),
    ("GET", "/openapi.json", None),
    ("POST", "/v1/events", Scope.ingest),
    ("PUT", "/v1/items/sku-1", Scope.ingest),
    ("POST", "/v1/items", Scope.ingest),
    ("DELETE", "/v1/items/sku-1", Scope.ingest),
    ("PUT", "/v1/users/u1", Scope.ingest),
    ("PUT", "/v1/users/u1/push", Scope.ingest),
    ("POST", "/v1/notifications/n1/feedback", Scope.ingest),
    ("GET", "/v1/recommendations/u1", Scope.read),
    ("GET", "/v1/recommendations/u1/stream", Scope.read),
    ("GET", "/v1/search", Scope.read),
    ("GET", "/v1/items/sku-1/similar", Scope.read),
    ("GET", "/v1/users/u1", Scope.read),
    ("GET", "/v1/users/u1/notifications", Scope.read),
    ("DELETE", "/v1/users/u1", Scope.admin),
    ("GET", "/v1/models", Scope.admin),
    ("POST", "/v1/models/train", Scope.admin),
    ("POST", "/v1/push/campaigns", Scope.admin),
    ("GET", "/v1/experiments/e1", Scope.admin),
    ("GET", "/metrics", Scope.admin),
    ("GET", "/v1/anything-new", Scope.admin),  # deny by default
])
def test_required_scope(method: str, path: str, scope: Scope | None) -> None:
    assert required_scope(method, path) == scope


def test_key_file_stores_hashes_and_stays_locked_when_emptied(tmp_path: Path) -> None:
    store = KeyFile(tmp_path / "keys.json")
    assert not store.exists
    key, row = store.create("read+ingest", "frontend")
    assert key not in (tmp_path / "keys.json").read_text()
    assert (tmp_path / "keys.json").stat().st_mode & 0o077 == 0  # readable by its owner only
    fresh = KeyFile(tmp_path / "keys.json")
    assert [k.key_id for k in fresh.keys()] == [row["id"]]
    assert KeyRing(fresh.keys()).match(key) is not None
    assert store.revoke(row["id"]) and not store.revoke(row["id"])
    assert KeyFile(tmp_path / "keys.json").keys() == [] and KeyFile(tmp_path / "keys.json").exists
    with pytest.raises(ValueError, match="unknown scope"):
        store.create("root")


def test_token_buckets_take_all_or_nothing() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=4.0, clock=lambda: now[0])
    assert buckets.wait_for({"a": 3.0, "b": 1.0}) == {}
    short = buckets.wait_for({"a": 2.0, "b": 1.0})  # a holds 1: refused, and b keeps its 3
    assert set(short) == {"a"} and short["a"] == pytest.approx(0.5)
    assert buckets.wait_for({"b": 3.0}) == {}
    now[0] = 0.5
    assert buckets.wait_for({"a": 2.0}) == {}
    assert buckets.wait_for({"c": 5.0}) == {"c": float("inf")}  # more than a burst never fits


def test_a_bug_answers_json_500_and_logs_one_escaped_line(caplog: pytest.LogCaptureFixture) -> None:
    app = FastAPI()
    app.add_middleware(UnexpectedErrors)

    @app.get("/boom/{anything}")
    def boom(anything: str) -> None:
        raise RuntimeError("a bug")

    with caplog.at_level(logging.ERROR), TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom/x%0Aforged%20line")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    records = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(records) == 1 and records[0].exc_info is not None
    assert "\n" not in records[0].getMessage() and "x\\nforged line" in records[0].getMessage()
    assert loggable("a" * 300).endswith("...") and len(loggable("a" * 300)) == 203
