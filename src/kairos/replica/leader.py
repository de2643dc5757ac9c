"""The leader lease: one process per database runs the background jobs.

An exclusive `flock` on `<db>.leader`. The kernel releases it when the holder exits,
however it exits (kill -9 included), so another process takes over within its next
try; nothing needs a heartbeat or a clock. With the log on PostgreSQL the lease is a
session advisory lock there instead (`PostgresLease`), so processes on different
machines elect one leader; the server releases it when the holder's connection drops.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kairos.store import names_postgres


class LeaderLease:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @classmethod
    def for_database(cls, db_path: Path) -> LeaderLease:
        return cls(db_path.with_name(db_path.name + ".leader"))

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


LEADER_LOCK = 0x6B6169726F7301  # the advisory lock key of the lease (the write lock's + 1 byte)


class PostgresLease:
    """The lease as a session advisory lock, held by a connection of its own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: Any = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    def try_acquire(self) -> bool:
        if self._conn is not None:
            return True
        import psycopg

        conn = psycopg.connect(self.url, autocommit=True)
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,)).fetchone()
        if not (row and row[0]):
            conn.close()
            return False
        self._conn = conn
        return True

    def release(self) -> None:
        if self._conn is not None:
            self._conn.close()  # the session ends: the lock goes with it
            self._conn = None


def lease_for(store_url: str, db_path: Path) -> LeaderLease | PostgresLease:
    """PostgreSQL's lease when the log is there, else the file beside the database."""
    if names_postgres(store_url):
        return PostgresLease(store_url)
    return LeaderLease.for_database(db_path)


class Candidacy:
    """Tries for the lease every `retry_s` until it holds it, then calls `elected` once."""

    def __init__(self, lease: LeaderLease | PostgresLease, elected: Callable[[], None],
                 retry_s: float = 1.0) -> None:
        self.lease = lease
        self.elected = elected
        self.retry_s = retry_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.lease.try_acquire():
            self.elected()
            return
        self._thread = threading.Thread(target=self._run, name="kairos-leader-candidate", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop trying. A lease already held stays held: its holder releases it once its
        last leader's duties (the final snapshot, saving the vector index) are done."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.retry_s):
            if self.lease.try_acquire():
                self.elected()
                return
