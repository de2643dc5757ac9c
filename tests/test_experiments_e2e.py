"""A/B experiments against a real server: two arms whose simulated users click at known,
different rates; the report must find the difference, and assignment must be stable."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
from test_ranking_shop import THEMES, item_id

from kairos.experiments.assignment import assign, bucket
from kairos.experiments.schema import Arm
from kairos.experiments.stats import difference, ratio, sample_ratio_mismatch

CLICK_RATE = {"control": 0.05, "diverse": 0.12}  # per impression, what the simulated users do
USERS = 400


def catalogue(client: Any) -> None:
    items = [{"item_id": item_id(theme, i), "title": title, "text": text, "categories": [theme]}
             for theme, rows in THEMES.items() for i, (title, text) in enumerate(rows)]
    assert client.post("/v1/items", json={"items": items}).status_code == 200


def test_two_arms_with_a_known_difference_are_told_apart(server_factory: Any, tmp_path: Any) -> None:
    server = server_factory(tmp_path / "ab.db")
    rng = np.random.default_rng(7)
    with server.client() as client:
        catalogue(client)
        bad = client.post("/v1/experiments", json={"id": "x", "metric": "click", "arms": [
            {"name": "a", "traffic": 0.5}, {"name": "b", "traffic": 0.4}]})
        assert bad.status_code == 422 and "arms" in bad.json()["error"]["message"]
        spec = {"id": "diversity-1", "metric": "click", "arms": [
            {"name": "control", "config": {}, "traffic": 0.5},
            {"name": "diverse", "config": {"diversity": 0.5, "weights": {"popular": 1.0}}, "traffic": 0.5}]}
        created = client.post("/v1/experiments", json=spec)
        assert created.status_code == 201, created.text
        assert client.post("/v1/experiments", json={**spec, "id": "another"}).status_code == 409

        arms: dict[str, str] = {}
        for u in range(USERS):
            user = f"shopper{u}"
            listed = client.get(f"/v1/recommendations/{user}", params={"n": 10}).json()
            assert listed["experiment"] == "diversity-1"
            arms[user] = listed["arm"]
            clicks = [{"user_id": user, "item_id": entry["item_id"], "type": "click",
                       "request_id": listed["request_id"]}
                      for entry in listed["items"] if rng.random() < CLICK_RATE[listed["arm"]]]
            if clicks:
                assert client.post("/v1/events", json={"events": clicks}).status_code == 200
        # The same user always lands in the same arm.
        again = client.get("/v1/recommendations/shopper3").json()
        assert again["arm"] == arms["shopper3"]

        report = client.get("/v1/experiments/diversity-1").json()
        control, diverse = report["arms"]
        assert control["users"] + diverse["users"] == USERS
        assert control["requests"] >= control["users"] and control["impressions"] == 10 * control["requests"]
        assert control["rate_low"] < CLICK_RATE["control"] < control["rate_high"]
        assert diverse["rate_low"] < CLICK_RATE["diverse"] < diverse["rate_high"]
        versus = diverse["vs_control"]
        assert versus["low"] > 0 and versus["p_value"] < 0.001, versus
        assert versus["low"] < CLICK_RATE["diverse"] - CLICK_RATE["control"] < versus["high"]
        assert report["sample_ratio"]["mismatch"] is False
        shown = subprocess.run([sys.executable, "-m", "kairos", "experiments", "show", "diversity-1",
                                "--url", server.url], capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and "diverse" in shown.stdout and "sample ratio ok" in shown.stdout, shown

    # Across a restart: the same arm, and the counts are still there.
    server.stop()
    restarted = server_factory(tmp_path / "ab.db")
    with restarted.client() as client:
        assert client.get("/v1/recommendations/shopper3").json()["arm"] == arms["shopper3"]
        stopped = client.post("/v1/experiments/diversity-1/stop", json={"winner": "diverse"})
        assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
        assert stopped.json()["winner"] == "diverse" and stopped.json()["arms"][0]["users"] >= USERS // 3
        after = client.get("/v1/recommendations/shopper3").json()
        assert after["experiment"] is None and after["arm"] is None
        assert client.post("/v1/experiments/diversity-1/stop", json={"winner": "nobody"}).status_code == 422
        assert client.get("/v1/experiments/nothing").status_code == 404


def test_assignment_is_a_stable_split_in_the_configured_shares() -> None:
    arms = [Arm(name="a", traffic=0.2), Arm(name="b", traffic=0.8)]
    names = [assign("e1", f"u{i}", arms).name for i in range(20_000)]
    assert abs(names.count("a") / len(names) - 0.2) < 0.015
    assert names == [assign("e1", f"u{i}", arms).name for i in range(20_000)]
    assert bucket("e1", "u1") != bucket("e2", "u1")  # experiments split users independently


def test_the_statistics_find_a_known_difference_and_a_sample_ratio_mismatch() -> None:
    rng = np.random.default_rng(0)
    impressions = np.full(2000, 10)
    a = ratio(rng.binomial(10, 0.05, 2000), impressions)
    b = ratio(rng.binomial(10, 0.06, 2000), impressions)
    same = ratio(rng.binomial(10, 0.05, 2000), impressions)
    assert difference(b, a)["p_value"] < 0.01 and difference(b, a)["low"] > 0
    assert difference(same, a)["low"] < 0 < difference(same, a)["high"]
    assert sample_ratio_mismatch([5000, 5000], [0.5, 0.5])["mismatch"] is False
    assert sample_ratio_mismatch([5300, 4700], [0.5, 0.5])["mismatch"] is True
