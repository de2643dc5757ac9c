"""A quick in-process loop for comparing two versions of the serving code on one machine
at one time: ml-latest-small imported whole, a 1-epoch behaviour model, then 1,000 calls
of the `sequential` source and 1,000 of `Engine.recommend` for the users whose live
sequence is full (200 visits). Process CPU time per call.

To compare with an older commit, run it once per tree, alternating:

    git worktree add /tmp/old <commit>
    PYTHONPATH=/tmp/old/src .venv/bin/python benchmarks/source_loop.py
    .venv/bin/python benchmarks/source_loop.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

import kairos
from kairos.config import Settings
from kairos.datasets.movielens import import_movielens
from kairos.engine import Engine
from kairos.training.pipeline import as_registered, train_from_store

DATA = Path(os.environ.get("KAIROS_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
CALLS = 1000


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        engine = Engine(Settings(db_path=Path(scratch) / "k.db", sqlite_synchronous="NORMAL"))
        import_movielens(engine, DATA / "ml-latest-small")
        run = train_from_store(engine.store, engine.settings, engine.semantic.embed if engine.semantic else None,
                               overrides={"epochs": 1}, quiet=True)
        engine.install_model(as_registered(run))
        users = [u for u, s in engine.state.users.items() if sum(1 for x in s.recent if x.visit) >= 200]
        source = engine.sources["sequential"]
        calls = {
            "source": lambda user: source.candidates(engine.user_context(user, exclude_seen=True), 30),
            "recommend": lambda user: engine.recommend(user, 10),
        }
        print(f"code: {Path(kairos.__file__).parent}; {len(users)} users")
        for name, call in calls.items():
            started = time.process_time()
            for i in range(CALLS):
                call(users[i % len(users)])
            print(f"{name}: {(time.process_time() - started) * 1000 / CALLS:.2f} ms CPU per call")
        engine.close()


if __name__ == "__main__":
    main()
