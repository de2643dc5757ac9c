"""A short version of benchmarks/push_workers.py: two `kairos push-worker` processes over
one PostgreSQL outbox, one killed with SIGKILL mid-run."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import push_workers

from kairos.config import Settings
from kairos.push.worker import FLUSH_EVERY


def test_two_workers_one_killed_lose_nothing_and_record_each_delivery_once(postgres_url: str, tmp_path: Path) -> None:
    result = push_workers.trial(postgres_url, tmp_path, notifications=800, workers=2, kill_at=0.3, lease_s=2.0,
                                timeout_s=120)
    assert result["killed_after_received"] is not None
    assert result["outbox"] == {"delivered": 800}
    assert result["received_unique"] == 800 and result["lost"] == 0
    assert result["outbox_positions_repeated"] == 0
    # Sent again only what the killed worker had in flight or had not yet recorded.
    assert result["resent_in_flight"] <= Settings().push_concurrency + FLUSH_EVERY
