"""`kairos serve --workers 2`: two processes on one port over one database, each
following the log. Whatever process takes an event, every process's next answer
reflects it; a process killed with SIGKILL is replaced and loses nothing; the
leader's background work moves to the survivor."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

WORKERS = {"KAIROS_WORKERS": "2"}
ITEMS = [{"item_id": f"i{k}", "title": f"item {k}", "categories": ["c"]} for k in range(30)]


def fresh_get(url: str, **params: Any) -> httpx.Response:
    """A new connection each time, so the kernel may hand it to either process."""
    with httpx.Client(timeout=10.0) as client:
        return client.get(url, params=params)


def processes(server: Any, attempts: int = 200) -> dict[int, dict[str, Any]]:
    seen: dict[int, dict[str, Any]] = {}
    for _ in range(attempts):
        health = fresh_get(f"{server.url}/healthz").json()
        seen[health["process"]] = health
        if len(seen) == 2:
            break
    return seen


def wait_for(condition: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = condition()
        except httpx.TransportError:
            found = None
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_two_processes_serve_every_write_to_every_reader(server_factory: Any) -> None:
    server = server_factory(env=WORKERS)
    seen = processes(server)
    assert len(seen) == 2, "both processes answer"
    assert sorted(h["leader"] for h in seen.values()) == [False, True], "exactly one leads"
    with httpx.Client(base_url=server.url, timeout=10.0) as writer:
        assert writer.post("/v1/items", json={"items": ITEMS}).status_code == 200
        for k in range(40):
            user = f"reader-{k}"
            event = {"user_id": user, "item_id": f"i{k % 30}", "type": "click"}
            assert writer.post("/v1/events", json={"events": [event]}).status_code == 200
            # Read-your-writes through whichever process the next connection reaches.
            recent = fresh_get(f"{server.url}/v1/users/{user}").json()["recent"]
            assert [step["item_id"] for step in recent] == [f"i{k % 30}"], user
            listed = fresh_get(f"{server.url}/v1/recommendations/{user}", n=5).json()["items"]
            assert f"i{k % 30}" not in [item["item_id"] for item in listed]  # seen: excluded everywhere
    # Both processes hold the same state.
    counts = {pid: (h["events"], h["users"], h["items"]) for pid, h in processes(server).items()}
    assert len(set(counts.values())) == 1, counts


def test_a_burst_of_connections_is_spread_over_both_processes(server_factory: Any) -> None:
    """Each process listens on its own socket (api/supervisor.py): with one shared socket,
    whichever process woke first could take every connection of a burst and keep it."""
    import threading

    server = server_factory(env=WORKERS)
    assert len(processes(server)) == 2
    clients = [httpx.Client(base_url=server.url, timeout=10.0) for _ in range(32)]
    start = threading.Barrier(len(clients))
    holders: dict[int, int] = {}  # client -> the process that answered it

    def connect(k: int) -> None:
        start.wait()
        holders[k] = clients[k].get("/healthz").json()["process"]

    threads = [threading.Thread(target=connect, args=(k,)) for k in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        per_process = {pid: list(holders.values()).count(pid) for pid in set(holders.values())}
        # Spread by a hash of each connection: 4 or more each, but for a chance of ~3e-6.
        assert len(per_process) == 2 and min(per_process.values()) >= 4, per_process
        # A connection stays with its process (keep-alive).
        assert all(clients[k].get("/healthz").json()["process"] == holders[k] for k in range(8))
    finally:
        for client in clients:
            client.close()


def test_a_killed_process_is_replaced_and_the_leader_moves(server_factory: Any, tmp_path: Any) -> None:
    import os
    import signal

    server = server_factory(env=WORKERS)
    seen = processes(server)
    assert len(seen) == 2
    with httpx.Client(base_url=server.url, timeout=10.0) as client:
        client.post("/v1/items", json={"items": ITEMS})
        for k in range(20):
            client.post("/v1/events", json={"events": [{"user_id": f"u{k}", "item_id": "i1", "type": "click"}]})
    leader = next(pid for pid, h in seen.items() if h["leader"])
    os.kill(leader, signal.SIGKILL)
    # The survivor takes the lease; the supervisor starts a new process in the dead one's place.
    after = wait_for(lambda: (found := processes(server)) and len(found) == 2 and leader not in found
                     and sum(h["leader"] for h in found.values()) == 1 and found, timeout=60)
    assert all(h["events"] == 20 for h in after.values()), after
    if "KAIROS_STORE_URL" not in server.env:  # on PostgreSQL the lease is an advisory lock, not a file
        lease = (server.db_path.with_name(server.db_path.name + ".leader")).read_text().strip()
        assert int(lease) in after and int(lease) != leader


def test_a_restart_starts_from_the_snapshot_the_leader_left(server_factory: Any, tmp_path: Any) -> None:
    db = tmp_path / "snap.db"
    env = {**WORKERS, "KAIROS_SNAPSHOT_MIN_EVENTS": "0"}
    server = server_factory(db, env=env)
    with httpx.Client(base_url=server.url, timeout=10.0) as client:
        client.post("/v1/items", json={"items": ITEMS})
        for k in range(30):
            client.post("/v1/events", json={"events": [{"user_id": f"u{k % 7}", "item_id": f"i{k % 30}",
                                                        "type": "click"}]})
    before = processes(server)
    server.stop()  # the leader writes one as it stops
    assert db.with_name("snap.db.snapshot").exists()
    restarted = server_factory(db, env=env)
    after = processes(restarted)
    assert {h["started_from"] for h in after.values()} == {"snapshot"}
    keys = ("events", "users", "items", "log_position")
    assert {tuple(h[k] for k in keys) for h in after.values()} == {tuple(h[k] for k in keys) for h in before.values()}
    recent = fresh_get(f"{restarted.url}/v1/users/u3").json()["recent"]
    assert [step["item_id"] for step in recent] == ["i24", "i17", "i10", "i3"]


def test_two_processes_over_postgresql(server_factory: Any, postgres_url: str) -> None:
    """KAIROS_STORE_URL: the log on a real PostgreSQL server; both processes follow it
    and every write shows in every reader, through fresh connections."""
    from kairos.store.postgres import PostgresStore

    server = server_factory(env={**WORKERS, "KAIROS_STORE_URL": postgres_url})
    seen = processes(server)
    assert len(seen) == 2
    assert sorted(h["leader"] for h in seen.values()) == [False, True], "one leads (PostgreSQL's lease)"
    with httpx.Client(base_url=server.url, timeout=10.0) as writer:
        assert writer.post("/v1/items", json={"items": ITEMS}).status_code == 200
        for k in range(15):
            user = f"pg-{k}"
            event = {"user_id": user, "item_id": f"i{k}", "type": "click"}
            assert writer.post("/v1/events", json={"events": [event]}).status_code == 200
            recent = fresh_get(f"{server.url}/v1/users/{user}").json()["recent"]
            assert [step["item_id"] for step in recent] == [f"i{k}"], user
    counts = {pid: (h["events"], h["items"]) for pid, h in processes(server).items()}
    assert set(counts.values()) == {(15, 30)}, counts
    store = PostgresStore(postgres_url)
    try:
        assert store.count_events() == 15 and len(list(store.iter_items())) == 30
    finally:
        store.close()
    assert not server.db_path.exists() or "events" not in _sqlite_tables(server.db_path)


def _sqlite_tables(path: Any) -> set[str]:
    import sqlite3

    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_with_redis_both_processes_count_against_one_rate_limit(server_factory: Any, redis_url: str) -> None:
    """KAIROS_RATE_LIMIT with KAIROS_REDIS_URL: a caller gets its burst once, however many
    processes answer it (each process counting alone would let it have twice as much)."""
    server = server_factory(env={**WORKERS, "KAIROS_RATE_LIMIT": "1", "KAIROS_RATE_BURST": "10",
                                 "KAIROS_REDIS_URL": redis_url})
    clients = [httpx.Client(base_url=server.url, timeout=10.0) for _ in range(12)]
    try:
        answered_by = {client.get("/healthz").json()["process"] for client in clients}  # open: not counted
        assert len(answered_by) == 2
        statuses = [clients[k % len(clients)].get("/v1/items/none").status_code for k in range(36)]
        allowed = sum(status != 429 for status in statuses)
        assert 10 <= allowed <= 13, statuses  # the burst, and what refilled while the test ran
        assert statuses[-1] == 429
    finally:
        for client in clients:
            client.close()
