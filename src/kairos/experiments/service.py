"""The experiment a request is in, what it was shown, what came of it, and the report.

Exposures are buffered and written in batches (a recommendation request never waits
on a disk write): after a crash, at most the last `FLUSH_S` of exposures are missing
from the counts, never an event. An event names the list it answers by `request_id`;
attribution keeps one outcome per (request, item, type), so a double click counts once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kairos.config import Settings
from kairos.experiments.assignment import assign
from kairos.experiments.database import open_experiment_database
from kairos.experiments.schema import ArmConfig, ExperimentSpec
from kairos.experiments.stats import difference, ratio, sample_ratio_mismatch
from kairos.store.base import EventRecord, ItemRecord, UserRecord

log = logging.getLogger(__name__)

FLUSH_S = 0.5
REFRESH_S = 1.0  # how soon an experiment created or stopped elsewhere (the CLI) applies
EXPOSURES_REMEMBERED = 100_000  # unflushed or recent request ids, for attribution in memory
CONVERSIONS = {"click": ("click", "push_click"), "purchase": ("purchase",)}


class ExperimentConflict(RuntimeError):
    """The id exists already, or another experiment is running."""


class UnknownArm(ValueError):
    pass


@dataclass
class Assignment:
    experiment: str | None
    arm: str | None
    config: ArmConfig  # the arm's, over the promoted winner's, over the service's own

    def recommend_options(self, configured: dict[str, float]) -> dict[str, Any]:
        """Engine.recommend's keyword arguments for this config (absent: the service's own)."""
        config, options = self.config, {}
        if config.sources is not None or config.weights is not None:
            weights = dict(configured)
            weights.update(config.weights or {})
            if config.sources is not None:
                weights = {name: w for name, w in weights.items() if name in config.sources}
            options["weights"] = weights
        if config.ranker is not None:
            options["ranker"] = config.ranker
        if config.diversity is not None:
            options["diversity"] = config.diversity
        if config.llm is not None:
            options["apply_rules"] = config.llm
        return options


class ExperimentService:
    def __init__(self, db_path: Path, clock: Any = None, settings: Settings | None = None) -> None:
        """`settings`: where the tables live (PostgreSQL with a store URL); default: the
        SQLite file `db_path`."""
        self.db = open_experiment_database(settings or Settings(), db_path)
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: list[tuple[str, str, str, str, int, float]] = []
        self._recent: dict[str, tuple[str, str]] = {}  # request id -> (experiment, arm)
        self._running: ExperimentSpec | None = None
        self._promoted = ArmConfig()
        self._loaded_at = -1e18
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._flush_loop, name="kairos-experiments", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()
        self.db.close()

    def _now(self) -> float:
        return self._clock.now() if self._clock is not None else time.time()

    def _flush_loop(self) -> None:
        while not self._stop.wait(FLUSH_S):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - keep flushing on the next tick
                log.exception("could not write experiment exposures")

    # -- experiments ----------------------------------------------------------------------

    def create(self, spec: ExperimentSpec) -> dict[str, Any]:
        with self.db.exclusive():  # one running experiment, whichever node starts one
            if self.db.query("SELECT 1 FROM experiments WHERE id = ?", (spec.id,)):
                raise ExperimentConflict(f"experiment {spec.id!r} exists already")
            running = self.db.query("SELECT id FROM experiments WHERE status = 'running'")
            if running:
                raise ExperimentConflict(f"experiment {running[0][0]!r} is running: stop it first")
            self.db.execute("INSERT INTO experiments (id, spec, status, created_at) VALUES (?, ?, 'running', ?)",
                            (spec.id, spec.model_dump_json(), self._now()))
        self._reload()
        return self.describe(spec.id)

    def stop(self, experiment_id: str, winner: str | None = None) -> dict[str, Any]:
        spec, status = self._spec(experiment_id)
        if winner is not None and winner not in {arm.name for arm in spec.arms}:
            raise UnknownArm(f"winner: {winner!r} is not an arm of {experiment_id!r}")
        if status == "running":
            self.flush()
            self.db.execute("UPDATE experiments SET status = 'stopped', stopped_at = ?, winner = ? WHERE id = ?",
                            (self._now(), winner, experiment_id))
        elif winner is not None:
            self.db.execute("UPDATE experiments SET winner = ? WHERE id = ?", (winner, experiment_id))
        self._reload()
        return self.describe(experiment_id)

    def list(self) -> list[dict[str, Any]]:
        rows = self.db.query("SELECT id FROM experiments ORDER BY created_at DESC")
        return [self.describe(row[0]) for row in rows]

    def describe(self, experiment_id: str) -> dict[str, Any]:
        rows = self.db.query("SELECT spec, status, created_at, stopped_at, winner FROM experiments WHERE id = ?",
                             (experiment_id,))
        if not rows:
            raise KeyError(experiment_id)
        spec, status, created_at, stopped_at, winner = rows[0]
        return {**json.loads(spec), "status": status, "created_at": created_at, "stopped_at": stopped_at,
                "winner": winner}

    def _spec(self, experiment_id: str) -> tuple[ExperimentSpec, str]:
        description = self.describe(experiment_id)
        return ExperimentSpec.model_validate({k: description[k] for k in ("id", "arms", "metric")}), \
            description["status"]

    def _reload(self) -> None:
        running = self.db.query("SELECT spec FROM experiments WHERE status = 'running' ORDER BY created_at LIMIT 1")
        promoted = self.db.query("SELECT spec, winner FROM experiments WHERE winner IS NOT NULL "
                                 "ORDER BY stopped_at DESC LIMIT 1")
        config = ArmConfig()
        if promoted:
            spec = ExperimentSpec.model_validate_json(promoted[0][0])
            config = next(arm.config for arm in spec.arms if arm.name == promoted[0][1])
        with self._lock:
            self._running = ExperimentSpec.model_validate_json(running[0][0]) if running else None
            self._promoted = config
            self._loaded_at = time.monotonic()

    # -- the request path -----------------------------------------------------------------

    def assignment(self, user_id: str) -> Assignment:
        if time.monotonic() - self._loaded_at > REFRESH_S:
            self._reload()
        with self._lock:
            running, promoted = self._running, self._promoted
        if running is None:
            return Assignment(None, None, promoted)
        arm = assign(running.id, user_id, running.arms)
        merged = promoted.model_copy(update=arm.config.model_dump(exclude_none=True))
        return Assignment(running.id, arm.name, merged)

    def record_exposure(self, request_id: str, experiment: str, arm: str, user_id: str, impressions: int) -> None:
        with self._lock:
            self._pending.append((request_id, experiment, arm, user_id, impressions, self._now()))
            self._recent[request_id] = (experiment, arm)
            if len(self._recent) > EXPOSURES_REMEMBERED:
                for key in list(self._recent)[: EXPOSURES_REMEMBERED // 10]:
                    del self._recent[key]

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        self.db.insert_many("INSERT INTO experiment_exposures (request_id, experiment, arm, user_id, impressions, "
                            "ts) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                            pending)

    # -- attribution (an engine listener) -------------------------------------------------

    def events_ingested(self, records: Sequence[EventRecord]) -> None:
        answering = [r for r in records if r.context and isinstance(r.context.get("request_id"), str)]
        if not answering:
            return
        rows = []
        for record in answering:
            request_id = record.context["request_id"]  # type: ignore[index]
            with self._lock:
                found = self._recent.get(request_id)
            if found is None:
                stored = self.db.query("SELECT experiment, arm FROM experiment_exposures WHERE request_id = ?",
                                       (request_id,))
                found = stored[0] if stored else None
            if found is not None:
                rows.append((request_id, record.item_id, record.type, found[0], found[1], record.user_id,
                             record.timestamp))
        self.db.insert_many("INSERT INTO experiment_outcomes (request_id, item_id, type, experiment, arm, user_id, "
                            "ts) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                            rows)

    def items_upserted(self, records: Sequence[ItemRecord]) -> None:
        pass

    def users_upserted(self, records: Sequence[UserRecord]) -> None:
        pass

    def user_forgotten(self, user_id: str) -> None:
        self.flush()
        self.db.execute("DELETE FROM experiment_exposures WHERE user_id = ?", (user_id,))
        self.db.execute("DELETE FROM experiment_outcomes WHERE user_id = ?", (user_id,))

    # -- the report -----------------------------------------------------------------------

    def report(self, experiment_id: str) -> dict[str, Any]:
        """Per arm: users, requests, impressions, conversions, the rate (conversions per
        impression) with its 95% interval, and against the first arm the difference with
        its interval and p-value; and the sample-ratio check of users per arm."""
        spec, _ = self._spec(experiment_id)
        self.flush()
        types = CONVERSIONS[spec.metric]
        exposure = {(arm, user): (requests, impressions) for arm, user, requests, impressions in self.db.query(
            "SELECT arm, user_id, COUNT(*), SUM(impressions) FROM experiment_exposures WHERE experiment = ? "
            "GROUP BY arm, user_id", (experiment_id,))}
        converted = {(arm, user): count for arm, user, count in self.db.query(
            f"SELECT arm, user_id, COUNT(*) FROM experiment_outcomes WHERE experiment = ? "
            f"AND type IN ({','.join('?' * len(types))}) GROUP BY arm, user_id", (experiment_id, *types))}
        arms: list[dict[str, Any]] = []
        estimates = []
        for arm in spec.arms:
            users = [user for (name, user) in exposure if name == arm.name]
            impressions = [exposure[(arm.name, u)][1] for u in users]
            conversions = [converted.get((arm.name, u), 0) for u in users]
            estimate = ratio(conversions, impressions)
            estimates.append(estimate)
            low, high = estimate.interval
            arms.append({"name": arm.name, "traffic": arm.traffic, "config": arm.config.model_dump(exclude_none=True),
                         "users": len(users), "requests": int(sum(exposure[(arm.name, u)][0] for u in users)),
                         "impressions": int(sum(impressions)), "conversions": int(sum(conversions)),
                         "rate": estimate.rate, "rate_low": low, "rate_high": high})
        control = estimates[0]
        for entry, estimate in zip(arms[1:], estimates[1:], strict=True):
            entry["vs_" + arms[0]["name"]] = difference(estimate, control)
        return {**self.describe(experiment_id), "arms": arms, "control": arms[0]["name"],
                "sample_ratio": sample_ratio_mismatch([a["users"] for a in arms], [a.traffic for a in spec.arms])}
