"""The model registry: versioned, immutable artefacts on disk and a pointer to the one served.

    <root>/<version>/model.pt, config.json   the TrainedModel artefact
    <root>/<version>/training.json           item ids (model index i + 1 is item_ids[i]),
                                             preset, what the log held
    <root>/CURRENT                           the served version's name

A version is complete before CURRENT names it (written to a temporary name, then
renamed), so a server that follows CURRENT never loads half a model, whichever
process trained it. With a PostgreSQL store (`shared`) the versions and the pointer live
in the database as well (store/artefacts.py): the folder is then this node's copy, and
a version trained on another node is fetched into it when first served.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kairos.models import TrainedModel  # torch: imported when a model is loaded
    from kairos.store.artefacts import PostgresArtefacts

CURRENT = "CURRENT"
TRAINING = "training.json"
KIND = "sequential"  # this registry's versions among the shared ones


@dataclass
class RegisteredModel:
    model: TrainedModel
    item_ids: list[str]
    path: Path
    training: dict[str, Any]  # preset, data summary (events read, users, items)

    @property
    def version(self) -> str:
        return self.model.version


class ModelRegistry:
    def __init__(self, root: Path, keep: int = 3, shared: PostgresArtefacts | None = None) -> None:
        self.root = Path(root)
        self.keep = keep
        self.shared = shared

    def publish(self, model: TrainedModel, item_ids: list[str], training: dict[str, Any]) -> Path:
        """Write the artefact, then point CURRENT at it; prune old versions."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = model.save(self.root / model.version)
        _write_atomically(path / TRAINING, json.dumps({**training, "item_ids": item_ids}))
        if self.shared is not None:
            meta = json.loads((path / "config.json").read_text())
            self.shared.publish(KIND, model.version, path, meta, self.keep)
        _write_atomically(self.root / CURRENT, model.version + "\n")
        self._prune()
        return path

    def activate(self, version: str) -> None:
        """Serve an earlier (or any complete) version: a rollback is one pointer write."""
        if self.shared is not None:
            self.shared.activate(KIND, version)
            return
        if not (self.root / version / TRAINING).exists() or version.startswith("."):
            raise FileNotFoundError(f"model {version!r} is not in {self.root}")
        _write_atomically(self.root / CURRENT, version + "\n")

    def current_version(self) -> str | None:
        if self.shared is not None:
            return self.shared.current(KIND)
        try:
            version = (self.root / CURRENT).read_text().strip()
        except FileNotFoundError:
            return None
        return version or None

    def load(self, version: str | None = None) -> RegisteredModel | None:
        """The given version, or the current one; None when there is none."""
        version = version or self.current_version()
        if version is None:
            return None
        path = self.root / version
        if not (path / TRAINING).exists() and self.shared is not None:
            self.shared.fetch(KIND, version, self.root)
        if not (path / TRAINING).exists():
            raise FileNotFoundError(f"model {version!r} is not in {self.root}")
        from kairos.models import TrainedModel

        training = json.loads((path / TRAINING).read_text())
        item_ids = training.pop("item_ids")
        model = TrainedModel.load(path)
        if len(item_ids) != model.n_items:
            raise ValueError(f"{path}: {len(item_ids)} item ids for a model of {model.n_items} items")
        return RegisteredModel(model, item_ids, path, training)

    def versions(self) -> list[dict[str, Any]]:
        """Every complete version, newest first, with what its config.json says."""
        if self.shared is not None:
            return [describe(meta, version) for version, meta in self.shared.listed(KIND)]
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.iterdir():
            if path.is_dir() and not path.name.startswith(".") and (path / TRAINING).exists():
                found.append(describe(json.loads((path / "config.json").read_text()), path.name))
        return sorted(found, key=lambda v: (v["created_at"] or "", v["version"]), reverse=True)

    def _prune(self) -> None:
        """This folder's old versions (the shared registry prunes its own on publish)."""
        current = self.current_version()
        local = ModelRegistry(self.root, self.keep)
        for old in local.versions()[self.keep :]:
            if old["version"] != current:
                shutil.rmtree(self.root / old["version"], ignore_errors=True)


def describe(meta: dict[str, Any], version: str) -> dict[str, Any]:
    """What the API and the CLI show of a version (its config.json, without the epoch history)."""
    return {"version": version, "created_at": meta.get("created_at"),
            "metrics": {k: v for k, v in meta.get("metrics", {}).items() if k != "history"},
            "data_fingerprint": meta.get("data_fingerprint"), "training_seconds": meta.get("training_seconds"),
            "config": meta.get("config")}


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
