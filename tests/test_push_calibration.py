"""The calibration of p: fitted on the event log (a temporal cut), stored in the database,
picked up by push; and until then the hand-set prior."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kairos.clock import SimulatedClock
from kairos.config import Settings
from kairos.datasets.demo import DemoConfig, generate_demo, import_demo_data
from kairos.engine import Engine
from kairos.push.calibration import DEFAULT, FEATURES, Calibrator, fit_calibration
from kairos.push.service import PushService


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calibration") / "demo.db"
    engine = Engine(Settings(db_path=path, sqlite_synchronous="NORMAL"))
    import_demo_data(engine, generate_demo(DemoConfig(n_users=300, n_items=200, n_events=20_000, seed=3)),
                     quiet=True)
    engine.close()
    return path


def test_a_fit_on_the_log_ranks_held_out_items_and_keeps_a_true_base_rate(demo_db: Path) -> None:
    engine = Engine(Settings(db_path=demo_db), rebuild=False)
    try:
        fitted = fit_calibration(engine.store, engine.settings, None, quiet=True)
    finally:
        engine.close()
    meta = fitted.meta
    assert fitted.fitted and meta["items"] >= 50 and meta["positives"] >= 100
    assert meta["held_out_auc"] > 0.75  # far from a coin on items the fit never saw
    assert 0.0005 < meta["base_rate"] < 0.05
    taste = dict(zip(FEATURES, fitted.coef, strict=True))
    assert taste["semantic"] > 0 and taste["covisit"] > 0  # closer taste, likelier engagement
    x = np.random.default_rng(0).normal(size=(5, len(FEATURES))).astype(np.float32)
    assert np.array_equal(Calibrator.from_json(fitted.to_json()).p(x), fitted.p(x))  # stored losslessly


def test_a_per_user_fit_labels_each_users_own_later_events(demo_db: Path) -> None:
    """For logs whose timestamps carry order only: each user's own last 20% are the labels,
    and only items at least `min_takers` users took are fitted on."""
    engine = Engine(Settings(db_path=demo_db), rebuild=False)
    try:
        fitted = fit_calibration(engine.store, engine.settings, None, quiet=True, per_user=True, min_takers=3)
    finally:
        engine.close()
    meta = fitted.meta
    assert fitted.fitted and meta["per_user"] and meta["window_s"] is None
    assert meta["positives"] >= 3 * meta["items"]  # every item has at least three takers
    assert meta["held_out_auc"] > 0.75


def test_the_cli_fit_is_stored_and_push_uses_it(demo_db: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "kairos", "push", "calibrate", "--db", str(demo_db)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "calibrated on" in result.stdout and "held-out AUC" in result.stdout
    engine = Engine(Settings(db_path=demo_db), clock=SimulatedClock(1_775_000_000.0))
    push = PushService(engine, deliver=False)
    try:
        assert push.calibrator.fitted and push.stats()["calibration"]["fitted"]
        assert push.calibrator.coef != DEFAULT.coef
    finally:
        push.close()
        engine.close()


def test_the_cli_refuses_a_log_too_small_to_say_anything(tmp_path: Path) -> None:
    engine = Engine(Settings(db_path=tmp_path / "tiny.db"))
    engine.close()
    result = subprocess.run([sys.executable, "-m", "kairos", "push", "calibrate", "--db", str(tmp_path / "tiny.db")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "calibration needs at least" in result.stdout
