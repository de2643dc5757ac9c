"""Rate limits shared through a real Redis: one limit across processes and nodes."""

from __future__ import annotations

import time

import pytest
import redis

from kairos.api.limits.shared_buckets import SharedTokenBuckets

from conftest import free_port


def test_shared_buckets_take_all_or_nothing(redis_url: str) -> None:
    buckets = SharedTokenBuckets(redis_url, "t", rate=2.0, burst=4.0)
    assert buckets.wait_for({"a": 3.0, "b": 1.0}) == {}
    short = buckets.wait_for({"a": 2.0, "b": 1.0})  # a holds 1: refused, and b keeps its 3
    assert set(short) == {"a"} and short["a"] == pytest.approx(0.5, abs=0.1)
    assert buckets.wait_for({"b": 3.0}) == {}
    assert buckets.wait_for({"c": 5.0}) == {"c": float("inf")}  # more than a burst never fits
    time.sleep(0.6)
    assert buckets.wait_for({"a": 2.0}) == {}


def test_two_nodes_share_one_limit_and_user_ids_never_reach_redis(redis_url: str) -> None:
    node_a = SharedTokenBuckets(redis_url, "user-events", rate=1.0, burst=5.0)
    node_b = SharedTokenBuckets(redis_url, "user-events", rate=1.0, burst=5.0)
    assert node_a.wait_for({"alice@example.com": 3.0}) == {}
    assert set(node_b.wait_for({"alice@example.com": 3.0})) == {"alice@example.com"}  # 2 left, not 5
    assert node_b.wait_for({"bob": 3.0}) == {}  # another user's bucket is their own
    names = [key.decode() for key in redis.Redis.from_url(redis_url).keys("*")]
    assert len(names) == 2 and not any("alice" in name or "bob" in name for name in names)
    ttl = redis.Redis.from_url(redis_url).pttl(names[0])
    assert 0 < ttl <= 6000  # gone once it would be full again


def test_an_unreachable_redis_lets_requests_through(caplog: pytest.LogCaptureFixture) -> None:
    buckets = SharedTokenBuckets(f"redis://127.0.0.1:{free_port()}/0", "t", rate=1.0, burst=1.0)
    started = time.monotonic()
    assert buckets.wait_for({"a": 1.0}) == {} and buckets.wait_for({"a": 1.0}) == {}
    assert time.monotonic() - started < 2.0
    assert sum("Redis unreachable" in r.message for r in caplog.records) == 1
