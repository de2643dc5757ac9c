"""The calibration of p: fitted on the event log (a temporal cut), stored in the database,
picked up by push; and until then the hand-set prior."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kairos.clock import SimulatedClock
from kairos.config import Settings
from kairos.datasets.demo import DemoConfig, generate_demo, import_demo_data
from kairos.engine import Engine
from kairos.push.calibration import DEFAULT, FEATURES, Calibrator, fit_calibration
from kairos.push.service import PushService
from kairos.schema import Item

# The demo log is imported once for the module, before any test's own PostgreSQL database
# exists: these tests read that SQLite file (the fit reads any store through the same protocol).
pytestmark = pytest.mark.sqlite_only


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calibration") / "demo.db"
    engine = Engine(Settings(db_path=path, sqlite_synchronous="NORMAL"))
    import_demo_data(engine, generate_demo(DemoConfig(n_users=300, n_items=200, n_events=20_000, seed=3)),
                     quiet=True)
    engine.close()
    return path


def fit(db: Path, **options: Any) -> Calibrator:
    """fit_calibration on the database at `db`, without a behaviour model."""
    engine = Engine(Settings(db_path=db), rebuild=False)
    try:
        return fit_calibration(engine.store, engine.settings, None, quiet=True, **options)
    finally:
        engine.close()


def test_a_fit_on_the_log_ranks_held_out_items_and_keeps_a_true_base_rate(demo_db: Path) -> None:
    fitted = fit(demo_db)
    meta = fitted.meta
    assert fitted.fitted and meta["items"] >= 50 and meta["positives"] >= 100
    assert meta["held_out_auc"] > 0.75  # far from a coin on items the fit never saw
    assert 0.0005 < meta["base_rate"] < 0.05
    # The serving model is the best measured one, out of every candidate.
    quality = meta["held_out_precision@100"]
    assert set(quality) == {"logistic:all", "logistic:semantic", "logistic:sequential", "logistic:covisit",
                            "logistic:taste", "lightgbm:all"}
    assert meta["model"] == max(quality, key=quality.__getitem__) and fitted.kind == meta["model"].split(":")[0]
    x = np.random.default_rng(0).normal(size=(5, len(FEATURES))).astype(np.float32)
    assert np.array_equal(Calibrator.from_json(fitted.to_json()).p(x), fitted.p(x))  # stored losslessly


def test_a_logistic_fit_learns_that_closer_taste_means_likelier_engagement(demo_db: Path) -> None:
    fitted = fit(demo_db, kinds=("logistic",))
    assert fitted.kind == "logistic" and fitted.meta["model"].startswith("logistic:")
    taste = dict(zip(FEATURES, fitted.coef, strict=True))
    assert taste["semantic"] > 0  # every subset the fit can choose keeps the text feature or behaviour
    if fitted.meta["model"] in ("logistic:all", "logistic:covisit", "logistic:taste"):
        assert taste["covisit"] > 0


def test_a_cold_fit_is_of_items_made_new_and_push_serves_it_for_untouched_items(demo_db: Path) -> None:
    warm = fit(demo_db, kinds=("logistic",))
    cold = fit(demo_db, cold=True, kinds=("logistic",))
    assert cold.meta["cold"] and not warm.meta["cold"] and cold.meta["held_out_auc"] > 0.7
    assert cold.meta["behaviour_model"] is None  # the serving model knows the items made new
    warm.cold = cold
    stored = Calibrator.from_json(warm.to_json())
    assert stored.cold is not None and stored.cold.coef == cold.coef
    assert stored.for_item(cold=True) is stored.cold and stored.for_item(cold=False) is stored


def test_a_per_user_fit_labels_each_users_own_later_events(demo_db: Path) -> None:
    """For logs whose timestamps carry order only: each user's own last 20% are the labels,
    and only items at least `min_takers` users took are fitted on."""
    fitted = fit(demo_db, per_user=True, min_takers=3)
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
        assert push.calibrator.to_json() != DEFAULT.to_json()
        assert push.calibrator.cold is not None and push.stats()["calibration"]["cold"]["cold"]
        # An item nobody has touched is scored with the cold map, a known one with the warm.
        engine.upsert_items([Item(item_id="brand-new", title="A brand new thing", text="new")])
        fresh, known = engine.catalog.index["brand-new"], engine.catalog.index[engine.catalog.ids[0]]
        assert push.targeter.calibrator_for(fresh) is push.calibrator.cold
        assert push.targeter.calibrator_for(known) is push.calibrator
    finally:
        push.close()
        engine.close()


def test_the_cli_refuses_a_log_too_small_to_say_anything(tmp_path: Path) -> None:
    engine = Engine(Settings(db_path=tmp_path / "tiny.db"))
    engine.close()
    result = subprocess.run([sys.executable, "-m", "kairos", "push", "calibrate", "--db", str(tmp_path / "tiny.db")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "calibration needs at least" in result.stdout


def test_trees_rank_a_big_audience_through_the_linear_screen(demo_db: Path) -> None:
    """Over more users than `keep`, the screen's likeliest get the trees' p and rank first."""
    trees = fit(demo_db, kinds=("lightgbm",))
    assert trees.kind == "lightgbm" and trees.screen is not None and trees.screen.kind == "logistic"
    x = np.random.default_rng(1).normal(size=(400, len(FEATURES))).astype(np.float32)
    ranked = trees.ranked(x, keep=50)
    shortlist = np.argsort(-trees.screen.p(x), kind="stable")[:50]
    assert np.allclose(ranked[shortlist], trees.p(x[shortlist]))
    rest = np.setdiff1d(np.arange(len(x)), shortlist)
    assert ranked[rest].max() < ranked[shortlist].min()
    assert np.array_equal(trees.ranked(x, keep=len(x)), trees.p(x))  # small audiences: trees for all
    stored = Calibrator.from_json(trees.to_json())
    assert np.array_equal(stored.ranked(x, keep=50), ranked)
