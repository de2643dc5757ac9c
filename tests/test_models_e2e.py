"""End-to-end: background training through the API and `kairos train`, and the hot
swap a running `kairos serve` makes while clients keep asking for recommendations."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import database_rows

pytestmark = pytest.mark.e2e

N_ITEMS = 20
TINY = {"depth": 1, "width": 32, "heads": 1, "max_len": 16, "batch_size": 16, "lr": 0.005, "epochs": 8,
        "patience": 8}
FAST_POLL = {"KAIROS_MODEL_POLL_S": "0.2"}


def load_pattern(client: httpx.Client, users: int = 40) -> None:
    """Users walk item k, k+1, k+2, ...: a sequence the model can learn in seconds."""
    items = [{"item_id": f"m{k}", "title": f"Movie number {k}", "categories": ["films"]} for k in range(N_ITEMS)]
    assert client.post("/v1/items", json={"items": items}).status_code == 200
    events = [
        {"user_id": f"u{u}", "item_id": f"m{(u + step) % N_ITEMS}", "type": "view",
         "timestamp": 1_750_000_000 + 100 * u + step}
        for u in range(users) for step in range(8)
    ]
    assert client.post("/v1/events", json={"events": events}).json() == {"accepted": len(events)}


def wait_for(check: Any, timeout: float = 180.0, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


class Requester:
    """Keeps asking for recommendations; records every status and model version."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: list[int] = []
        self.versions: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            k = 0
            while not self._stop.is_set():
                response = client.get(f"/v1/recommendations/u{k % 40}", params={"n": 5})
                self.statuses.append(response.status_code)
                if response.status_code == 200:
                    self.versions.append(response.json()["model_version"])
                k += 1

    def __enter__(self) -> Requester:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_background_training_swaps_the_model_without_failing_a_request(server_factory: Any) -> None:
    server = server_factory(env=FAST_POLL)
    with server.client() as client:
        load_pattern(client)
        status = client.get("/v1/models").json()
        assert status["sequential"] is None and status["model_version"] == "online-1"

        bad = client.post("/v1/models/train", json={"config": {"widht": 32}})
        assert bad.status_code == 422 and "widht" in bad.json()["error"]["message"]
        assert client.get("/v1/models").json()["training"] is None  # nothing started

        with Requester(server.url) as requester:
            started = client.post("/v1/models/train", json={"config": TINY})
            assert started.status_code == 202 and started.json()["training"]["state"] == "running"
            again = client.post("/v1/models/train", json={"config": TINY})
            assert again.status_code == 409 and again.json()["error"]["code"] == "training_in_progress"
            done = wait_for(lambda: (s := client.get("/v1/models").json())["training"]["state"] != "running" and s)
            assert done["training"]["state"] == "succeeded", done["training"]
            version = done["training"]["version"]
            assert done["sequential"]["version"] == version
            assert done["training"]["progress"]["epoch"] >= 1
            wait_for(lambda: requester.versions and requester.versions[-1].endswith(version))
        assert requester.statuses and set(requester.statuses) == {200}
        assert requester.versions[0] == "online-1" and requester.versions[-1] == f"online-1+{version}"

        served = client.get("/v1/recommendations/u3", params={"n": 5}).json()
        assert "sequential" in served["sources"]
        assert any("sequential" in item["sources"] for item in served["items"])
        assert f'kairos_model_info{{model_version="online-1+{version}"}} 1.0' in client.get("/metrics").text
        # Right after the behaviour model, a ranking model is trained for it and installed.
        ranked = wait_for(lambda: (s := client.get("/v1/models").json())["ranking"]
                          and s["ranking_training"]["state"] != "running" and s)
        assert ranked["ranking"]["sequential_version"] == version
        assert ranked["ranking_training"]["state"] == "succeeded" and ranked["training"]["version"] == version
        assert ranked["ranking"]["mode"] in ("learned", "fitted", "configured")
    if server.env.get("KAIROS_STORE_URL"):  # on PostgreSQL every node can fetch both versions
        stored = database_rows(server, "SELECT kind, version FROM model_versions")
        assert {kind for kind, _ in stored} == {"sequential", "ranking"}
        assert ("sequential", version) in stored


def test_kairos_train_publishes_and_a_running_server_picks_it_up(server_factory: Any, tmp_path: Path) -> None:
    db = tmp_path / "server.db"
    server = server_factory(db, env=FAST_POLL)
    with server.client() as client:
        load_pattern(client)
        env = dict(os.environ, KAIROS_SEQUENTIAL_CONFIG=__import__("json").dumps(TINY))
        trained = subprocess.run([sys.executable, "-m", "kairos", "train", "--db", str(db), "--set", "seed=5"],
                                 env=env, capture_output=True, text=True, timeout=300)
        assert trained.returncode == 0, trained.stdout + trained.stderr
        assert "epoch 1:" in trained.stdout and "published" in trained.stdout
        version = (db.with_name(db.name + ".models") / "CURRENT").read_text().strip()
        wait_for(lambda: client.get("/v1/models").json()["model_version"] == f"online-1+{version}", timeout=30)
        listed = subprocess.run([sys.executable, "-m", "kairos", "models", "--db", str(db)],
                                capture_output=True, text=True, timeout=60, env=dict(os.environ, COLUMNS="200"))
        assert version in listed.stdout

        bad = subprocess.run([sys.executable, "-m", "kairos", "train", "--db", str(db), "--set", "loss=hinge"],
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode == 1 and "loss" in bad.stdout
        assert (db.with_name(db.name + ".models") / "CURRENT").read_text().strip() == version  # unchanged

        newer = subprocess.run([sys.executable, "-m", "kairos", "train", "--db", str(db), "--set", "seed=6"],
                               env=env, capture_output=True, text=True, timeout=300)
        assert newer.returncode == 0, newer.stdout + newer.stderr
        latest = (db.with_name(db.name + ".models") / "CURRENT").read_text().strip()
        assert latest != version
        wait_for(lambda: client.get("/v1/models").json()["model_version"] == f"online-1+{latest}", timeout=30)
        missing = client.post("/v1/models/activate", json={"version": "seqrec-nope"})
        assert missing.status_code == 404
        rolled_back = client.post("/v1/models/activate", json={"version": version})
        assert rolled_back.status_code == 200 and rolled_back.json()["model_version"] == f"online-1+{version}"
        assert [v["version"] for v in rolled_back.json()["versions"]] == [latest, version]
    server.stop()
    restarted = server_factory(db)
    with restarted.client() as client:
        assert client.get("/v1/models").json()["model_version"] == f"online-1+{version}"
