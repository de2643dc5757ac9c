"""Training in the background while the service keeps serving.

A training run is a separate process (`kairos train --json`, at lower CPU priority),
so it never holds the serving process's interpreter or lock. It reads the durable
log (SQLite WAL lets it read while the server writes), publishes a new version to
the registry and exits. The server's `ModelManager` follows the registry: when
CURRENT names a version it does not serve, it loads it and swaps it in
atomically; that is also how a model trained by hand with `kairos train` in
another terminal goes live. The manager also decides when to retrain.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kairos.engine import Engine

log = logging.getLogger(__name__)

LOG_LINES_KEPT = 20
TRAINING_NICENESS = 10  # serving first: the trainer only takes CPU that requests leave


class TrainingInProgress(RuntimeError):
    """A training run is already going on."""


@dataclass
class TrainingJob:
    """What a caller can see of a background training run."""

    id: int
    reason: str  # "requested", "no model yet", "retrain interval", "ranking for the served model"
    model: str = "sequential"  # sequential | ranker (trained after each behaviour model)
    state: str = "running"  # running | succeeded | failed
    started_at: str = field(default_factory=lambda: _now())
    finished_at: str | None = None
    pid: int | None = None
    version: str | None = None  # the version it published
    error: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)  # the latest epoch report
    log_tail: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ModelManager:
    """Owns the background training process and follows the registry for the engine."""

    def __init__(self, engine: Engine, poll_s: float | None = None,
                 may_train: Callable[[], bool] = lambda: True) -> None:
        self.engine = engine
        self.may_train = may_train  # processes that follow another's lead only load what it publishes
        self.settings = engine.settings
        self.poll_s = poll_s if poll_s is not None else self.settings.model_poll_s
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self.job: TrainingJob | None = None  # the latest behaviour-model job
        self.ranking_job: TrainingJob | None = None  # the latest ranking job (after each behaviour model)
        self._jobs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.load_errors = 0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._follow, name="kairos-models", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following; a running training process is terminated (its partial work is
        never published, so nothing half-done survives)."""
        self._stop.set()
        with self._lock:
            process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- training -------------------------------------------------------------------------

    def train(self, reason: str = "requested", overrides: dict[str, Any] | None = None,
              model: str = "sequential") -> TrainingJob:
        """Start a background training run; TrainingInProgress if one is running."""
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                running = self.ranking_job if self.ranking_job and self.ranking_job.state == "running" else self.job
                raise TrainingInProgress(f"training job {running.id if running else '?'} is still running")
            self._jobs += 1
            job = TrainingJob(self._jobs, reason, model)
            command = [sys.executable, "-m", "kairos", "train", "--db", str(self.engine.store_path()),
                       "--model-dir", str(self.engine.model_registry().root), "--model", model, "--json"]
            if overrides:
                command += ["--config", json.dumps(overrides)]
            self._process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                preexec_fn=_lower_priority if os.name == "posix" else None,  # noqa: PLW1509
            )
            job.pid = self._process.pid
            if model == "ranker":
                self.ranking_job = job
            else:
                self.job = job
            threading.Thread(target=self._watch, args=(job, self._process), name="kairos-training",
                             daemon=True).start()
        log.info("training job %d started (%s), pid %d", job.id, reason, job.pid)
        return job

    def _watch(self, job: TrainingJob, process: subprocess.Popen[str]) -> None:
        tail: deque[str] = deque(maxlen=LOG_LINES_KEPT)
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            message = _json_line(line)
            if message is None:
                tail.append(line)
                job.log_tail = list(tail)
            elif "epoch" in message:
                job.progress = message
            elif "published" in message:
                job.version = message["published"]
        code = process.wait()
        job.finished_at = _now()
        if code == 0 and job.version is not None:
            job.state = "succeeded"
            self._load_current()  # at once, not at the next poll
            log.info("training job %d published %s", job.id, job.version)
            if job.model == "sequential" and self.settings.ranker != "off" and not self._stop.is_set():
                self._train_ranking("ranking for the served model")
        else:
            job.state = "failed"
            job.error = tail[-1] if tail else f"exit code {code}"
            log.warning("training job %d failed: %s", job.id, job.error)

    @property
    def training(self) -> bool:
        return any(job is not None and job.state == "running" for job in (self.job, self.ranking_job))

    # -- following the registry -----------------------------------------------------------

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._load_current()
            if not self.may_train():
                continue
            try:
                self._maybe_train()
            except Exception:  # noqa: BLE001 - a scheduling hiccup must not stop the thread
                log.exception("could not start background training")

    def _load_current(self) -> None:
        try:
            self.engine.load_current_model()
        except Exception:  # noqa: BLE001 - keep serving the model we have
            self.load_errors += 1
            log.exception("could not load the current model; still serving %s", self.engine.model_version)

    def _maybe_train(self) -> None:
        reason = self.due()
        if reason is not None:
            self.train(reason)
        elif self.ranking_due():
            self._train_ranking("ranking for the served model")

    def _train_ranking(self, reason: str) -> None:
        try:
            self.train(reason, model="ranker")
        except TrainingInProgress:
            pass  # the next poll asks again

    def ranking_due(self) -> bool:
        """A behaviour model serves without a ranking model trained for it."""
        engine = self.engine
        if self.settings.ranker == "off" or engine.registered is None or self.training:
            return False
        if self.ranking_job is not None and self.ranking_job.state == "failed" \
                and self._failed_recently(self.ranking_job):
            return False
        ranking = engine.ranking
        return ranking is None or ranking.sequential_version != engine.sequential_version

    def due(self) -> str | None:
        """Why a background training should start now, or None."""
        settings = self.settings
        if self.training or self.job is not None and self.job.state == "failed" and self._failed_recently(self.job):
            return None
        events = self.engine.state.events_applied
        registered = self.engine.registered
        if registered is None:
            if settings.sequential_auto_train and events >= settings.sequential_min_events:
                return "no model yet"
            return None
        interval = settings.sequential_retrain_interval_s
        if interval <= 0:
            return None
        trained_at = datetime.fromisoformat(registered.model.created_at).timestamp()
        new_events = events - int(registered.training.get("data", {}).get("events", 0))
        if time.time() - trained_at >= interval and new_events >= settings.sequential_min_new_events:
            return "retrain interval"
        return None

    def _failed_recently(self, job: TrainingJob) -> bool:
        """After a failure, wait an interval (or an hour) before trying on our own again."""
        assert job.finished_at is not None
        wait = self.settings.sequential_retrain_interval_s or 3600.0
        return time.time() - datetime.fromisoformat(job.finished_at).timestamp() < wait

    def status(self) -> dict[str, Any]:
        registered = self.engine.registered
        return {
            "model_version": self.engine.model_version,
            "sequential": None if registered is None else {
                **_describe(registered), "preset": registered.training.get("preset"),
                "data": registered.training.get("data"),
            },
            "ranking": self.engine.ranking.describe() if self.engine.ranking is not None else None,
            "training": self.job.to_json() if self.job is not None else None,
            "ranking_training": self.ranking_job.to_json() if self.ranking_job is not None else None,
            "versions": self.engine.model_registry().versions(),
        }


def _describe(registered: Any) -> dict[str, Any]:
    from kairos.training.registry import describe

    return describe(registered.model.describe(), registered.version)


def _json_line(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _lower_priority() -> None:
    os.nice(TRAINING_NICENESS)


__all__ = ["ModelManager", "TrainingInProgress", "TrainingJob"]
