"""API keys: what a key may do, and how a presented key is matched.

Only a key's SHA-256 is kept in memory and on disk; a presented key is hashed and
compared with every known hash in constant time (hmac.compare_digest), so neither
timing nor a memory dump gives a key away. Keys are long random tokens, so a fast
hash is enough (no password stretching needed)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

KEY_PREFIX = "kairos_"


class Scope(StrEnum):
    ingest = "ingest"  # events, items, user profiles, notification feedback
    read = "read"  # recommendations, search, similar, items, users, inboxes, streams
    admin = "admin"  # user deletion, models, push configuration, experiments, metrics; implies the others


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ApiKey:
    key_id: str  # names the key in logs and rate limits: never the key itself
    scopes: frozenset[Scope]
    sha256: str
    name: str = ""

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.admin in self.scopes

    @classmethod
    def of(cls, key: str, scopes: Iterable[Scope], name: str = "") -> ApiKey:
        hashed = digest(key)
        return cls(hashed[:12], frozenset(scopes), hashed, name)


def parse_scopes(text: str) -> frozenset[Scope]:
    scopes = set()
    for part in text.split("+"):
        try:
            scopes.add(Scope(part.strip()))
        except ValueError:
            raise ValueError(f"unknown scope {part.strip()!r} (scopes: ingest, read, admin)") from None
    return frozenset(scopes)


def parse_keys(spec: str) -> list[ApiKey]:
    """`read+ingest:k1,admin:k2` (KAIROS_API_KEYS) -> keys; an error names the bad pair
    by position, never by its key."""
    keys = []
    for position, pair in enumerate(p.strip() for p in spec.split(",")):
        if not pair:
            continue
        scopes, sep, key = pair.partition(":")
        if not sep or not key.strip():
            raise ValueError(f"KAIROS_API_KEYS pair {position + 1} is not scope:key")
        keys.append(ApiKey.of(key.strip(), parse_scopes(scopes), name=f"env[{position + 1}]"))
    return keys


class KeyRing:
    """The keys a server accepts: those of KAIROS_API_KEYS and those of the key file.
    `enforced`: whether keys are required at all — once any key was configured, even
    revoking the last one leaves the doors locked, never open."""

    def __init__(self, keys: Iterable[ApiKey] = (), enforced: bool | None = None) -> None:
        self.keys = list(keys)
        self.enforced = bool(self.keys) if enforced is None else enforced

    def match(self, presented: str) -> ApiKey | None:
        hashed = digest(presented)
        found = None
        for key in self.keys:  # no early exit: the time does not say which key matched
            if hmac.compare_digest(key.sha256, hashed):
                found = key
        return found
