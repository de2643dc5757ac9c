"""The key file `kairos keys create` writes (default: `<db_path>.keys.json`): each key's
id, scopes, name, creation time and SHA-256 — never the key. A running server rereads
it when it changes, so a created or revoked key counts within a second. Once the file
exists, keys are required, even when every key in it was revoked."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from kairos.api.auth.keys import ApiKey, Scope, new_key, parse_scopes

RELOAD_EVERY_S = 1.0


class KeyFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: list[ApiKey] = []
        self._stamp: tuple[int, int] | None = None
        self._checked = float("-inf")

    def _read(self) -> list[dict[str, Any]]:
        try:
            document = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as error:
            raise ValueError(f"the key file {self.path} cannot be read: {error}") from None
        return list(document.get("keys", []))

    def _write(self, rows: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.path.with_name(self.path.name + ".tmp")
        descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            json.dump({"keys": rows}, out, indent=2)
            out.flush()
            os.fsync(out.fileno())
        os.replace(scratch, self.path)

    def rows(self) -> list[dict[str, Any]]:
        return self._read()

    def create(self, scopes: str, name: str = "") -> tuple[str, dict[str, Any]]:
        """A new key with these scopes (`read`, `read+ingest`, ...): returns the key (shown
        once) and its row."""
        key = new_key()
        parsed = parse_scopes(scopes)
        entry = ApiKey.of(key, parsed, name)
        row = {"id": entry.key_id, "scopes": sorted(s.value for s in parsed), "name": name,
               "created_at": round(time.time(), 3), "sha256": entry.sha256}
        self._write([*self._read(), row])
        return key, row

    def revoke(self, key_id: str) -> bool:
        rows = self._read()
        kept = [row for row in rows if row.get("id") != key_id]
        if len(kept) == len(rows):
            return False
        self._write(kept)
        return True

    @property
    def exists(self) -> bool:
        self.keys()
        return self._stamp is not None

    def keys(self) -> list[ApiKey]:
        """The file's keys, reread at most once a second and only when it changed."""
        now = time.monotonic()
        if now - self._checked < RELOAD_EVERY_S:
            return self._keys
        self._checked = now
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._stamp = stamp
            self._keys = [ApiKey(row["id"], frozenset(Scope(s) for s in row["scopes"]), row["sha256"],
                                 row.get("name", "")) for row in self._read()] if stamp else []
        return self._keys
