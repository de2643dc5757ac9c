"""Snapshots of the online state at a log position: a process starts from the newest one
and follows the log from there, instead of replaying the whole log.

A snapshot holds what the events built (the catalogue as this process indexed it, users'
sequences, popularity, co-visitation, semantic profiles) and the positions it reflects;
models and the vector index are loaded as always. It is used only when it was made under
the same state-shaping settings and its positions are not past the log's; forgetting a
user deletes it (it holds their events). The leader writes one from a forked child (the
parent keeps serving; the child sees the state as it was at the fork, under the lock),
at start-up after a replay, every `snapshot_interval_s` and when it stops.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import pickle
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kairos.config import Settings

log = logging.getLogger(__name__)

FORMAT = 1
# The settings whose values shape what events build; a snapshot made under others is stale.
STATE_SETTINGS = ("event_weights", "popularity_half_life_s", "trend_half_life_s", "covisit_half_life_s",
                  "covisit_window_s", "covisit_lookback", "covisit_backward_weight", "covisit_max_neighbours",
                  "sequence_length",
                  "semantic_enabled", "semantic_half_life_s", "semantic_negative_share", "semantic_text_weight",
                  "text_model", "item_text_template", "item_text_attributes")


def snapshot_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".snapshot")


def settings_key(settings: Settings) -> str:
    chosen = {name: getattr(settings, name) for name in STATE_SETTINGS}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Snapshot:
    events_at: int
    changes_at: int
    settings_key: str
    parts: dict[str, Any]  # catalog, users, popularity, trending, covisit, events_applied, semantic
    made_at: float


def write(path: Path, snapshot: Snapshot) -> None:
    """Write atomically (a reader sees the previous snapshot or this one, never half)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as out:
        out.write(FORMAT.to_bytes(4, "little"))
        pickle.dump(snapshot, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def read(path: Path, settings: Settings, last_event: int, last_change: int) -> Snapshot | None:
    """The snapshot at `path` if it may be used for this store and these settings."""
    collecting = gc.isenabled()
    gc.disable()  # millions of new objects would trigger collections that find nothing: 3.6x slower
    try:
        with path.open("rb") as source:
            if int.from_bytes(source.read(4), "little") != FORMAT:
                return None
            snapshot: Snapshot = pickle.load(source)
    except FileNotFoundError:
        return None
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError) as error:
        log.warning("ignoring the snapshot %s: %s", path, error)
        return None
    finally:
        if collecting:
            gc.enable()
    if snapshot.settings_key != settings_key(settings):
        log.info("the snapshot %s was made under other settings: replaying the log", path)
        return None
    if snapshot.events_at > last_event or snapshot.changes_at > last_change:
        log.warning("the snapshot %s is ahead of its log (another database?): replaying the log", path)
        return None
    # What it holds lives as long as the process: out of the collector's sight, or each
    # collection that the next allocations trigger walks millions of objects (1 s here).
    gc.freeze()
    return snapshot


def discard(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def write_in_child(path: Path, take: Callable[[], Snapshot]) -> int | None:
    """Fork; the child writes `take()` to `path` and exits. Call with the state's lock held
    (the child's copy of the state is the parent's at this moment), release it at once.
    Returns the child's pid (None where there is no fork): reap it with `reap`."""
    if not hasattr(os, "fork"):
        write(path, take())
        return None
    pid = os.fork()
    if pid == 0:  # the child: write and leave without running anything of the parent's
        code = 0
        try:
            write(path, take())
        except BaseException:  # noqa: BLE001 - a child must exit, whatever happened
            code = 1
        os._exit(code)
    return pid


def reap(pid: int | None, wait: bool = False) -> bool:
    """True once the child has exited (successfully or not)."""
    if pid is None:
        return True
    try:
        done, status = os.waitpid(pid, 0 if wait else os.WNOHANG)
    except ChildProcessError:
        return True
    if done and os.waitstatus_to_exitcode(status) != 0:
        log.warning("writing a snapshot failed in its process (exit %s)", os.waitstatus_to_exitcode(status))
    return bool(done)


class Snapshotter:
    """The leader's snapshots: one writer at a time, every `interval_s` while the log moves,
    and one when it stops. `take` forks a writer and returns its pid; `position` is the
    log position the state has reached; `ready` says whether the state may be written now
    (not while counts are being recounted, say)."""

    def __init__(self, take: Callable[[], int | None], position: Callable[[], int],
                 ready: Callable[[], bool], interval_s: float, min_events: int) -> None:
        self.take = take
        self.position = position
        self.ready = ready
        self.interval_s = interval_s
        self.min_events = min_events
        self._child: int | None = None
        self._written_at: int | None = None  # the position of the latest one written
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, written_at: int | None) -> None:
        self._written_at = written_at
        self._thread = threading.Thread(target=self._run, name="kairos-snapshots", daemon=True)
        self._thread.start()

    def stop(self, final: bool) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if final:
            self._write(wait=True)
        elif self._child is not None:
            reap(self._child, wait=True)

    def _run(self) -> None:
        if self._written_at is None and not self._stop.wait(1.0):  # started by a replay: one soon
            self._write(wait=False)
        while not self._stop.wait(self.interval_s):
            try:
                self._write(wait=False)
            except Exception:
                log.exception("could not write a snapshot")

    def _write(self, wait: bool) -> None:
        if self._child is not None:
            if not reap(self._child, wait=wait):
                return
            self._child = None
        position = self.position()
        if position < self.min_events or position == self._written_at or not self.ready():
            return
        self._child = self.take()
        self._written_at = position
        if wait:
            reap(self._child, wait=True)
            self._child = None
