"""A generated shop imported once into a benchmark's database, reused by later runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def imported_shop(db: Path, users: int, items: int, events: int, **settings: Any) -> None:
    """Import a `kairos.datasets.demo` shop into `db` unless a finished import is there
    (a marker file says so: a run stopped half-way leaves a database without it)."""
    from kairos.config import Settings
    from kairos.datasets.demo import DemoConfig, import_demo
    from kairos.engine import Engine

    marker = db.with_name(db.name + ".imported")
    if marker.exists():
        return
    for stale in db.parent.glob(f"{db.name}*"):
        if stale.is_file():
            stale.unlink()
    engine = Engine(Settings(db_path=db, **settings))
    started = time.perf_counter()
    report = import_demo(engine, DemoConfig(n_users=users, n_items=items, n_events=events), quiet=True)
    engine.close()
    marker.touch()
    print(f"{db.name}: imported {report} in {time.perf_counter() - started:.0f}s", flush=True)
