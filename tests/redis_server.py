"""A real Redis for the tests: `redis-server` on a free local port, no persistence,
stopped at the end of the session (skipped, saying why, where it is not installed)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def binary() -> str | None:
    return shutil.which("redis-server")


class RedisServer:
    def __init__(self, executable: str, port: int) -> None:
        self.port = port
        self.root = Path(tempfile.mkdtemp(prefix="kairos-redis-"))
        self.process = subprocess.Popen(
            [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.root)], stdout=(self.root / "log").open("wb"), stderr=subprocess.STDOUT)
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start: {(self.root / 'log').read_text()}") from None
                time.sleep(0.02)
        client.close()
        self._databases = iter(range(16))

    def new_url(self) -> str:
        """A URL to a database of its own (Redis has 16), emptied."""
        import redis

        number = next(self._databases, 15)
        client = redis.Redis(port=self.port, db=number)
        client.flushdb()
        client.close()
        return f"redis://127.0.0.1:{self.port}/{number}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)
