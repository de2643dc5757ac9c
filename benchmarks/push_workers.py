"""Several push workers over one PostgreSQL outbox, one killed mid-run: nothing lost,
nothing delivered twice.

Enqueues N due notifications (webhook) in an empty PostgreSQL database, starts W
`kairos push-worker` processes against it and a webhook receiver (its own process,
benchmarks/_receiver.py), and kills one worker with SIGKILL once a share of the
notifications has arrived. The others claim with FOR UPDATE SKIP LOCKED and, once the
killed worker's lease is over, send what it held. Reports, from the receiver and the
outbox: notifications that never arrived (lost), outbox rows delivered other than once,
requests that repeated a notification id (the killed worker's in-flight sends, sent
again under the same Idempotency-Key), and throughput.

    .venv/bin/python benchmarks/push_workers.py                       # a temporary PostgreSQL
    .venv/bin/python benchmarks/push_workers.py --store-url postgresql://...  # an empty database

tests/test_push_workers_e2e.py runs a short version.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _machine import machine_info
from _servers import postgres
from push import Receiver

from kairos.push.channels.webhook import write_config
from kairos.push.outbox import NewNotification, Outbox
from kairos.push.postgres import PostgresPushDatabase
from kairos.push.schema import WebhookConfig

CAMPAIGN = "workers"


def enqueue(db: PostgresPushDatabase, count: int, now: float) -> None:
    rows = [NewNotification(id=f"n{k:06d}", dedupe_key=f"workers|{k}", user_id=f"u{k}", item_id="sku-1",
                            type="campaign", status="scheduled", created_at=now, due_at=now, expires_at=now + 86_400,
                            title="Trail shoes", body="Light, grippy.", channel="webhook", campaign_id=CAMPAIGN)
            for k in range(count)]
    for start in range(0, count, 5000):
        with db.transaction() as connection:
            Outbox.add(connection, rows[start:start + 5000])


def trial(store_url: str, workdir: Path, notifications: int, workers: int = 2, kill_at: float = 0.3,
          lease_s: float = 5.0, timeout_s: float = 300.0) -> dict[str, Any]:
    """One run; `kill_at`: the share of notifications received before a worker is killed
    (None of them killed when it is 0)."""
    db = PostgresPushDatabase(store_url)
    receiver = Receiver(workdir / "receiver.log")
    write_config(db, WebhookConfig(url=receiver.url, secret="bench-secret"), time.time())
    enqueue(db, notifications, time.time())
    env = {**os.environ, "KAIROS_STORE_URL": store_url, "KAIROS_DB_PATH": str(workdir / "unused.db"),
           "KAIROS_PUSH_LEASE_S": str(lease_s), "KAIROS_PUSH_BATCH": "200"}
    log = (workdir / "workers.log").open("ab")
    started = time.monotonic()
    processes = [subprocess.Popen([sys.executable, "-m", "kairos", "push-worker"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True) for _ in range(workers)]
    killed_at_received: int | None = None
    try:
        while time.monotonic() - started < timeout_s:
            received = receiver.stats().get(CAMPAIGN, {"requests": 0})["requests"]
            if killed_at_received is None and kill_at > 0 and received >= kill_at * notifications:
                os.killpg(processes[0].pid, signal.SIGKILL)
                killed_at_received = received
            delivered = db.query("SELECT count(*) FROM push_notifications WHERE status = 'delivered'")[0][0]
            if delivered >= notifications:
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - started
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        log.close()
    stats = receiver.stats().get(CAMPAIGN, {"requests": 0, "unique": 0})
    receiver.stop()
    statuses = dict(db.query("SELECT status, count(*) FROM push_notifications GROUP BY status"))
    twice = db.query("SELECT count(*) FROM (SELECT sent_seq FROM push_notifications WHERE sent_seq IS NOT NULL "
                     "GROUP BY sent_seq HAVING count(*) > 1) AS repeated")[0][0]
    by_worker = [count for (count,) in db.query(
        "SELECT count(*) FROM push_notifications WHERE status = 'delivered' GROUP BY worker ORDER BY 1 DESC")]
    db.close()
    return {"notifications": notifications, "workers": workers, "killed_after_received": killed_at_received,
            "lease_s": lease_s, "seconds": round(elapsed, 2),
            "per_second": round(notifications / elapsed, 1) if elapsed else None,
            "received_requests": stats["requests"], "received_unique": stats["unique"],
            "lost": notifications - stats["unique"], "resent_in_flight": stats["requests"] - stats["unique"],
            "outbox": statuses, "outbox_positions_repeated": twice, "delivered_by_last_holder": by_worker}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store-url", default="", help="An empty PostgreSQL database (default: a temporary one).")
    parser.add_argument("--notifications", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kill-at", type=float, default=0.3, help="Share received before one worker is killed.")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "push-workers.json")
    args = parser.parse_args()
    with postgres(args.store_url) as url, tempfile.TemporaryDirectory() as workdir:
        result = trial(url, Path(workdir), args.notifications, args.workers, args.kill_at)
    summary = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_info(),
               "command": " ".join(["benchmarks/push_workers.py", *sys.argv[1:]]), **result}
    print(json.dumps(result))
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
