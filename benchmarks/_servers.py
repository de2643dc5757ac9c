"""PostgreSQL and Redis for a benchmark: the URL given, or a temporary local server
(tests/postgres_server.py, tests/redis_server.py) stopped when the benchmark ends."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


@contextmanager
def postgres(url: str = "") -> Iterator[str]:
    """`url`, or an empty database on a temporary cluster."""
    if url:
        yield url
        return
    from conftest import free_port
    from postgres_server import PostgresServer, binaries

    bin_dir = binaries()
    if bin_dir is None:
        sys.exit("PostgreSQL is not installed: apt-get install postgresql, or pass a postgresql:// URL")
    server = PostgresServer(bin_dir, free_port())
    try:
        yield server.new_database()
    finally:
        server.stop()


@contextmanager
def redis(url: str = "") -> Iterator[str]:
    """`url`, or a temporary redis-server."""
    if url:
        yield url
        return
    from conftest import free_port
    from redis_server import RedisServer, binary

    executable = binary()
    if executable is None:
        sys.exit("Redis is not installed: apt-get install redis-server, or pass a redis:// URL")
    server = RedisServer(executable, free_port())
    try:
        yield server.new_url()
    finally:
        server.stop()
