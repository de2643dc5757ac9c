"""A webhook receiver for the push benchmark, in its own process (so it does not share an
interpreter with the load generator): records each delivery's idempotency key, campaign
and arrival time; GET /stats returns them per campaign.

    python benchmarks/_receiver.py PORT
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOCK = threading.Lock()
ARRIVALS: dict[str, list[float]] = defaultdict(list)
KEYS: dict[str, set[str]] = defaultdict(set)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a production endpoint

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        key = self.headers.get("Idempotency-Key", "")
        campaign = json.loads(body).get("campaign_id") or "(none)"
        with LOCK:
            ARRIVALS[campaign].append(time.time())
            KEYS[campaign].add(key)
        self._answer(200, b"{}")

    def do_GET(self) -> None:  # noqa: N802
        with LOCK:
            stats: dict[str, Any] = {c: {"requests": len(ARRIVALS[c]), "unique": len(KEYS[c]),
                                         "arrivals": ARRIVALS[c] if self.path.endswith("?arrivals=1") else None}
                                     for c in ARRIVALS}
        self._answer(200, json.dumps(stats).encode())

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()
