"""Errors the engine's paths raise and the API maps to answers (api/errors.py)."""

from __future__ import annotations


class FeatureDisabled(RuntimeError):
    """The request needs a part of Kairos this instance runs without."""


class NotFound(KeyError):
    """An id the caller named does not exist."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(key)
        self.kind = kind
        self.key = key

    def __str__(self) -> str:
        return f"{self.kind} {self.key!r} not found"
