"""Fine-tuned LoRA adapters of the local model, versioned beside the behaviour models:

    <model_dir>/llm/<version>/   adapter_config.json, adapter_model.safetensors (peft)
                                 finetune.json: base model, examples, accuracy before/after
    <model_dir>/llm/CURRENT      the served version's name

A version is complete before CURRENT names it (the same convention as the behaviour
model's registry), so a process that loads CURRENT never reads half an adapter. With a
PostgreSQL store the versions are shared through it the same way too (store/artefacts.py):
whichever node leads next serves the adapter another node trained.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kairos.training.registry import _write_atomically

if TYPE_CHECKING:
    from kairos.store.artefacts import PostgresArtefacts

CURRENT = "CURRENT"
META = "finetune.json"


class AdapterRegistry:
    KIND = "llm"

    def __init__(self, root: Path, keep: int = 3, shared: PostgresArtefacts | None = None) -> None:
        self.root = Path(root)
        self.keep = keep
        self.shared = shared

    def publish(self, built: Path, version: str, meta: dict[str, Any]) -> Path:
        """Move the adapter folder `built` in as `version`, then point CURRENT at it."""
        self.root.mkdir(parents=True, exist_ok=True)
        _write_atomically(built / META, json.dumps({**meta, "version": version}, indent=2))
        path = self.root / version
        shutil.move(str(built), path)
        if self.shared is not None:
            self.shared.publish(self.KIND, version, path, {**meta, "version": version}, self.keep)
        _write_atomically(self.root / CURRENT, version + "\n")
        self._prune()
        return path

    def current(self) -> Path | None:
        if self.shared is not None:
            version = self.shared.current(self.KIND) or ""
            if version and not (self.root / version / META).exists():
                self.shared.fetch(self.KIND, version, self.root)
        else:
            try:
                version = (self.root / CURRENT).read_text().strip()
            except FileNotFoundError:
                return None
        path = self.root / version
        return path if version and (path / META).exists() else None

    def versions(self) -> list[dict[str, Any]]:
        if self.shared is not None:
            return [meta for _, meta in self.shared.listed(self.KIND)]
        if not self.root.is_dir():
            return []
        found = [json.loads((p / META).read_text()) for p in self.root.iterdir() if (p / META).exists()]
        return sorted(found, key=lambda m: m.get("created_at", 0), reverse=True)

    def _prune(self) -> None:
        """This folder's old versions (the shared registry prunes its own on publish)."""
        current = self.current()
        for old in AdapterRegistry(self.root, self.keep).versions()[self.keep:]:
            path = self.root / old["version"]
            if path != current:
                shutil.rmtree(path, ignore_errors=True)
