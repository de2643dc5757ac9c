"""Experiments shared by nodes through PostgreSQL: one running experiment, exposures
recorded on one node and conversions attributed on another, one report."""

from __future__ import annotations

from pathlib import Path

import pytest

from kairos.config import Settings
from kairos.experiments.schema import Arm, ExperimentSpec
from kairos.experiments.service import ExperimentConflict, ExperimentService
from kairos.store.base import EventRecord


def test_two_nodes_run_one_experiment(postgres_url: str, tmp_path: Path) -> None:
    settings = Settings(store_url=postgres_url)
    node_a = ExperimentService(tmp_path / "a.db", settings=settings)
    node_b = ExperimentService(tmp_path / "b.db", settings=settings)  # its own local files: nothing shared there
    try:
        spec = ExperimentSpec(id="exp1", arms=[Arm(name="control", traffic=0.5), Arm(name="treatment", traffic=0.5)])
        node_a.create(spec)
        with pytest.raises(ExperimentConflict):  # one running experiment, whichever node asks
            node_b.create(ExperimentSpec(id="exp2", arms=spec.arms))
        node_b._reload()  # what the request path does every REFRESH_S
        for user in ("u1", "u2", "u3", "u4"):
            assert node_a.assignment(user).arm == node_b.assignment(user).arm is not None
        arm = node_a.assignment("u1").arm
        assert arm is not None
        node_a.record_exposure("r1", "exp1", arm, "u1", 10)
        node_a.flush()
        # The click answering node A's list reaches node B (a load balancer's choice).
        node_b.events_ingested([EventRecord("u1", "i1", "click", 1.0, None, {"request_id": "r1"})])
        node_a.events_ingested([EventRecord("u1", "i1", "click", 1.0, None, {"request_id": "r1"})])  # replayed
        arms = {a["name"]: a for a in node_b.report("exp1")["arms"]}
        assert arms[arm]["impressions"] == 10 and arms[arm]["conversions"] == 1
        stopped = node_b.stop("exp1", winner=arm)
        assert stopped["status"] == "stopped" and node_a.describe("exp1")["winner"] == arm
    finally:
        node_a.close()
        node_b.close()
