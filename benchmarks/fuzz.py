"""Fuzzing the API from its OpenAPI schema with schemathesis, as an outside client would.

A real `kairos serve` on 127.0.0.1 over a small shop (a catalogue, users, events, so
reads find something), then `schemathesis run` over every operation (examples,
coverage and fuzzing phases; valid and invalid inputs). Counted from the server's own
/metrics: requests answered, by status class. Pass: no answer >= 500, the server
still up, no traceback in its log.

    .venv/bin/python benchmarks/fuzz.py                    # about 5,000+ requests
    .venv/bin/python benchmarks/fuzz.py --max-examples 20  # a short run

Not part of CI (tests/test_fuzz_e2e.py runs a short version).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _machine import machine_info
from load import free_port

SHOP_ITEMS = [{"item_id": f"sku-{k}", "title": f"item {k}", "categories": [f"c{k % 4}"],
               "attributes": {"price": 10 + k}} for k in range(40)]



def schemathesis() -> str:
    return str(Path(sys.executable).with_name("schemathesis"))


def start_server(db: Path, log: Path, port: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("kairos")), "serve", "--db", str(db), "--port", str(port), "--workers", "1"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "KAIROS_SEQUENTIAL_AUTO_TRAIN": "false", "KAIROS_SEQUENTIAL_RETRAIN_INTERVAL_S": "0",
             **(env or {})})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"the server did not start: see {log}")


def stock(url: str) -> None:
    with httpx.Client(base_url=url, timeout=30.0) as client:
        client.post("/v1/items", json={"items": SHOP_ITEMS}).raise_for_status()
        events = [{"user_id": f"u{u}", "item_id": f"sku-{(u * 7 + k) % 40}", "type": "click"}
                  for u in range(30) for k in range(5)]
        client.post("/v1/events", json={"events": events}).raise_for_status()
        client.put("/v1/users/u1", json={"text": "likes coffee"}).raise_for_status()


def answered(url: str) -> Counter[str]:
    """Requests the server answered, by status class, from its Prometheus counters."""
    text = httpx.get(f"{url}/metrics", timeout=10.0).text
    counts: Counter[str] = Counter()
    for match in re.finditer(r'^kairos_http_requests_total\{[^}]*status="(\d)\d\d"[^}]*\} (\S+)$', text, re.MULTILINE):
        counts[f"{match.group(1)}xx"] += int(float(match.group(2)))
    return counts


def fuzz(url: str, max_examples: int, seed: int, workdir: Path) -> dict[str, Any]:
    command = [schemathesis(), "run", f"{url}/openapi.json", "--checks", "not_a_server_error",
               "--phases", "examples,coverage,fuzzing", "--mode", "all", "-n", str(max_examples),
               "--seed", str(seed), "--no-shrink", "--workers", "2", "--continue-on-failure",
               "--request-timeout", "30", "--generation-database", "none",
               "--report-dir", str(workdir / "report"), "--suppress-health-check", "all",
               "--exclude-path-regex", r".*/stream$"]  # endless by design: not a request/response
    started = time.monotonic()
    finished = subprocess.run(command, check=False, capture_output=True, text=True)
    return {"command": shlex.join(command), "returncode": finished.returncode,
            "seconds": round(time.monotonic() - started, 1), "output_tail": finished.stdout[-4000:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=120, help="Test cases per operation and phase.")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fuzz.json")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="kairos-fuzz-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "server.log"
    server = start_server(workdir / "fuzz.db", log, port)
    try:
        stock(url)
        before = answered(url)
        run = fuzz(url, args.max_examples, args.seed, workdir)
        after = answered(url)
        alive = server.poll() is None and httpx.get(f"{url}/healthz", timeout=10.0).status_code == 200
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    counts = {k: after[k] - before.get(k, 0) for k in after}
    server_log = log.read_text(errors="replace")
    result = {
        "benchmark": "fuzz", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]), "machine": machine_info(),
        "requests": sum(counts.values()), "by_status": counts, "server_alive": alive,
        "tracebacks_in_log": server_log.count("Traceback"), "schemathesis": run,
    }
    print(run["output_tail"][-1500:])
    print(json.dumps({k: result[k] for k in ("requests", "by_status", "server_alive", "tracebacks_in_log")}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    ok = alive and not counts.get("5xx") and not result["tracebacks_in_log"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
