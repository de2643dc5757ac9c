"""Short versions of the reliability runs (benchmarks/crash.py, benchmarks/fuzz.py):
kill -9 of every server process under concurrent event load loses no acknowledged
event and stores none twice; schemathesis over the OpenAPI schema gets no answer
>= 500 and no traceback."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import crash
import fuzz


@pytest.mark.sqlite_only  # counts rows in the SQLite file; the PostgreSQL trial is the next test
def test_kill_9_under_load_loses_no_acknowledged_event(tmp_path: Path, text_model_exported: None) -> None:
    rng = random.Random(5)
    db = tmp_path / "crash.db"
    results = [crash.trial(db, tmp_path, k, workers=2, clients=3, rng=rng, first=k * 10_000_000) for k in range(2)]
    assert sum(r["acknowledged"] for r in results) > 0
    for result in results:
        assert result["lost"] == 0 and result["duplicates"] == 0, result
        assert result["state_events"] == result["stored_events"], result  # the restarted state is the log


def test_kill_9_under_load_loses_nothing_on_postgresql(tmp_path: Path, text_model_exported: None,
                                                       postgres_url: str) -> None:
    rng = random.Random(6)
    db = tmp_path / "crash.db"  # the files beside the log
    results = [crash.trial(db, tmp_path, k, workers=2, clients=3, rng=rng, first=k * 10_000_000,
                           store_url=postgres_url) for k in range(2)]
    assert sum(r["acknowledged"] for r in results) > 0
    for result in results:
        assert result["lost"] == 0 and result["duplicates"] == 0, result
        assert result["state_events"] == result["stored_events"], result


def test_fuzzing_the_schema_finds_no_server_error(tmp_path: Path, text_model_exported: None) -> None:
    port = fuzz.free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    server = fuzz.start_server(tmp_path / "fuzz.db", log, port)
    try:
        fuzz.stock(url)
        before = fuzz.answered(url)
        run: dict[str, Any] = fuzz.fuzz(url, max_examples=3, seed=1, workdir=tmp_path)
        after = fuzz.answered(url)
        assert httpx.get(f"{url}/healthz", timeout=10.0).status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
    answered = {k: after[k] - before.get(k, 0) for k in after}
    assert sum(answered.values()) >= 200, (answered, run["output_tail"])
    assert not answered.get("5xx"), run["output_tail"]
    assert "Traceback" not in log.read_text(errors="replace")
    assert run["returncode"] == 0, run["output_tail"]
