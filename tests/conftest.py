"""Shared fixtures: where the datasets are, engines on temporary databases, real servers."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from kairos.clock import SimulatedClock
from kairos.config import Settings
from kairos.engine import Engine

ROOT = Path(__file__).resolve().parents[1]


def find_data_dir() -> Path:
    return Path(os.environ.get("KAIROS_DATA_DIR", ROOT.parent / "shared" / "data"))


@pytest.fixture
def data_dir() -> Path:
    return find_data_dir()


def dataset(name: str) -> Path:
    """The folder of a shared dataset, or skip the test saying where it was looked for."""
    path = find_data_dir() / name
    if not path.is_dir():
        pytest.skip(f"dataset {name} not found at {path} (set KAIROS_DATA_DIR)")
    return path


@pytest.fixture(autouse=True)
def store_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """With KAIROS_TEST_BACKEND=postgres every test runs on a fresh PostgreSQL database and
    an emptied Redis: Settings() read KAIROS_STORE_URL and KAIROS_REDIS_URL from the
    environment, so each engine, server and `kairos` child process the test starts keeps
    its log, push, experiments, models and embeddings in PostgreSQL and its rate limits
    and language-model lists in Redis. Tests marked `sqlite_only` look inside the SQLite
    file itself."""
    if os.environ.get("KAIROS_TEST_BACKEND") != "postgres" or request.node.get_closest_marker("sqlite_only"):
        return "sqlite"
    monkeypatch.setenv("KAIROS_STORE_URL", request.getfixturevalue("postgres_server").new_database())
    monkeypatch.setenv("KAIROS_REDIS_URL", request.getfixturevalue("redis_server").new_url())
    return "postgres"


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock(1_700_000_000.0)


@pytest.fixture
def engine(tmp_path: Path, clock: SimulatedClock) -> Iterator[Engine]:
    eng = Engine(Settings(db_path=tmp_path / "kairos.db"), clock=clock)
    yield eng
    eng.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """`kairos serve` in a subprocess on 127.0.0.1: the real thing, as users run it."""

    def __init__(self, db_path: Path, env: dict[str, str] | None = None) -> None:
        self.db_path = db_path
        # No background training unless a test asks for it: it would take a core. One
        # process unless a test asks for more (tests/test_workers_e2e.py does).
        self.env = {"KAIROS_SEQUENTIAL_AUTO_TRAIN": "false", "KAIROS_SEQUENTIAL_RETRAIN_INTERVAL_S": "0",
                    "KAIROS_WORKERS": "1", **(env or {})}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Server:
        env = dict(os.environ, KAIROS_DB_PATH=str(self.db_path), **self.env)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kairos", "serve", "--port", str(self.port)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: worker processes go with it
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = self.process.stdout.read().decode() if self.process.stdout else ""
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{output}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("server did not answer /healthz in time")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10.0)

    def kill(self) -> None:
        """SIGKILL to every process of the server: no shutdown hooks, no flushing, as in a crash."""
        assert self.process is not None
        _kill_group(self.process.pid)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            _kill_group(self.process.pid)  # a worker its supervisor left behind


def database_rows(server: Server, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """SQL (`?` placeholders) on the server's database: its SQLite file, or PostgreSQL."""
    url = server.env.get("KAIROS_STORE_URL")
    if not url:
        with sqlite3.connect(server.db_path) as conn:
            return conn.execute(sql, parameters).fetchall()
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(sql.replace("?", "%s"), parameters).fetchall()  # type: ignore[arg-type]


def rows_mentioning(server: Server, needle: str) -> int:
    """Rows of every table of the server's database with `needle` in any column."""
    url = server.env.get("KAIROS_STORE_URL")
    found = 0
    if not url:
        with sqlite3.connect(server.db_path) as conn:
            for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
                clauses = " OR ".join(f"CAST({c} AS TEXT) LIKE ?" for c in columns)
                found += conn.execute(f"SELECT count(*) FROM {table} WHERE {clauses}",
                                      [f"%{needle}%"] * len(columns)).fetchone()[0]
        return found
    import psycopg

    with psycopg.connect(url) as conn:
        tables = [row[0] for row in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")]
        for table in tables:  # a row cast to text holds every column, JSON included
            found += conn.execute(f"SELECT count(*) FROM {table} AS t WHERE t::text LIKE %s",  # type: ignore[arg-type]
                                  (f"%{needle}%",)).fetchone()[0]
    return found


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture(scope="session")
def text_model_exported() -> None:
    """Export the text encoder once (ONNX, int8: a clean clone has no export yet) before
    any server starts, so no test's first request pays for it against its timeout."""
    from kairos.text.encoder import load_encoder

    load_encoder()


@pytest.fixture
def server_factory(request: pytest.FixtureRequest, tmp_path: Path,
                   text_model_exported: None) -> Iterator[type[Server] | object]:
    """Starts `kairos serve` on a database file; with KAIROS_TEST_BACKEND=postgres the log,
    push and experiments are on the session's PostgreSQL instead (one database per file
    name, so a restarted server finds its data) and rate limits on its Redis."""
    started: list[Server] = []
    redis_url: list[str] = []

    def make(db_path: Path | None = None, env: dict[str, str] | None = None) -> Server:
        path = db_path or tmp_path / "server.db"
        if os.environ.get("KAIROS_TEST_BACKEND") == "postgres":
            databases = request.getfixturevalue("postgres_server").databases
            if path not in databases:  # the test's own database first, so its child processes agree
                own = os.environ.get("KAIROS_STORE_URL")
                databases[path] = (own if own and own not in databases.values()
                                   else request.getfixturevalue("postgres_server").new_database())
            if not redis_url:
                redis_url.append(os.environ.get("KAIROS_REDIS_URL") or request.getfixturevalue("redis_server").new_url())
            env = {"KAIROS_STORE_URL": databases[path], "KAIROS_REDIS_URL": redis_url[0], **(env or {})}
        server = Server(path, env).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


class Receiver:
    """A real HTTP endpoint on 127.0.0.1 that records what it gets and answers with the
    statuses it is told (then 200)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.delay_s = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a production receiver would

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on 127.0.0.1 (see Receiver)."""
    found = Receiver()
    yield found
    found.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A temporary PostgreSQL cluster for the session (skipped, saying why, without one)."""
    from postgres_server import PostgresServer, binaries

    bin_dir = binaries()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    server = PostgresServer(bin_dir, free_port())
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: Any) -> str:
    """A fresh, empty database on the session's server."""
    return str(postgres_server.new_database())


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    """A temporary Redis for the session (skipped, saying why, without one)."""
    from redis_server import RedisServer, binary

    executable = binary()
    if executable is None:
        pytest.skip("Redis is not installed (apt-get install redis-server; .ci/run does)")
    server = RedisServer(executable, free_port())
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    """An emptied Redis database on the session's server."""
    return str(redis_server.new_url())
