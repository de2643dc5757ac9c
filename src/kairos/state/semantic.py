"""Semantic state: item embeddings in a vector index and each user's semantic profile.

A user's profile is a time-decayed, event-weighted sum of the embeddings of the
items they engaged with (negative feedback subtracts a share), blended with the
embedding of their stated interests. It moves on every ingested event, so a click
changes the next request's semantic candidates.
"""

from __future__ import annotations

import copy
import json
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kairos.config import Settings
from kairos.index import VectorIndex
from kairos.state.catalog import Catalog
from kairos.store.base import EventRecord, ItemRecord
from kairos.text.cache import SQLiteEmbeddingCache, open_embedding_cache
from kairos.text.compose import item_text, text_hash

if TYPE_CHECKING:
    from kairos.text.encoder import TextEncoder

# float32 profiles: rescale while e**x stays small enough that sums and their squared
# norms cannot overflow (e**20 ~ 5e8).
_RESCALE_EXPONENT = 20.0


class UserProfile:
    """Forward-decayed weighted sum of item vectors; only its direction is used, so the
    common decay factor never needs applying."""

    __slots__ = ("events", "landmark", "vector")

    def __init__(self, dim: int) -> None:
        self.vector = np.zeros(dim, dtype=np.float32)
        self.landmark: float | None = None
        self.events = 0

    def add(self, item_vector: np.ndarray, weight: float, t: float, rate: float) -> None:
        if self.landmark is None:
            self.landmark = t
        exponent = rate * (t - self.landmark)
        if exponent > _RESCALE_EXPONENT:
            self.vector *= math.exp(-exponent)
            self.landmark, exponent = t, 0.0
        self.vector += np.float32(weight * math.exp(exponent)) * item_vector
        self.events += 1


class SemanticState:
    def __init__(self, settings: Settings, catalog: Catalog, db_path: Path,
                 encoder_factory: Callable[[], TextEncoder]) -> None:
        self.settings = settings
        self.catalog = catalog
        self._encoder_factory = encoder_factory
        self._encoder: TextEncoder | None = None
        self._lock = threading.RLock()
        self.db_cache = open_embedding_cache(settings.store_url, db_path)
        self.shared_cache = (SQLiteEmbeddingCache(settings.text_cache_dir / "embeddings.sqlite")
                             if settings.shared_embedding_cache else None)
        self.item_hashes: dict[int, str] = {}
        self.profiles: dict[str, UserProfile] = {}
        self.stated: dict[str, np.ndarray] = {}
        self.stated_text: dict[str, str] = {}
        self._rate = math.log(2.0) / settings.semantic_half_life_s if settings.semantic_half_life_s > 0 else 0.0
        self.index: VectorIndex | None = None
        self.encoded = 0  # texts actually run through the model (not found in a cache)

    # -- the model ------------------------------------------------------------------------

    @property
    def encoder(self) -> TextEncoder:
        """Loaded on first need: a store whose embeddings are all cached starts without it."""
        with self._lock:
            if self._encoder is None:
                self._encoder = self._encoder_factory()
            return self._encoder

    def warm_up(self) -> None:
        """Load the encoder (exporting it on a machine that has no export yet) and run it
        once, so the first request costs what the hundredth does."""
        self.encoder.encode(["warm-up"])

    @property
    def model_id(self) -> str:
        return self.encoder.model_id

    def embed(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """Vectors of texts, from the caches where possible, encoding only the rest."""
        hashes = [text_hash(t) for t in texts]
        model_id = self.model_id
        found = self.db_cache.get(model_id, hashes)
        missing = [h for h in dict.fromkeys(hashes) if h not in found]
        if missing and self.shared_cache is not None:
            shared = self.shared_cache.get(model_id, missing)
            found.update(shared)
            self.db_cache.put(model_id, shared)
            missing = [h for h in missing if h not in shared]
        if missing:
            by_hash = {h: t for h, t in zip(hashes, texts, strict=True)}
            vectors = self.encoder.encode([by_hash[h] for h in missing], show_progress=show_progress)
            new = dict(zip(missing, vectors, strict=True))
            self.encoded += len(new)
            self.db_cache.put(model_id, new)
            if self.shared_cache is not None:
                self.shared_cache.put(model_id, new)
            found.update(new)
        dim = self.encoder.dim
        return np.stack([found[h] for h in hashes]) if hashes else np.zeros((0, dim), dtype=np.float32)

    # -- items ----------------------------------------------------------------------------

    def sync_items(self, items: Sequence[ItemRecord], show_progress: bool = False) -> None:
        """Index the items whose composed text changed; drop those with no text."""
        with self._lock:
            if self.index is None:
                self.index = VectorIndex(self.encoder.dim, exact_max=self.settings.vector_exact_max)
            changed: list[tuple[int, str, str]] = []
            removed: list[int] = []
            for item in items:
                key = self.catalog.index[item.item_id]
                text = item_text(item, self.settings.item_text_template, tuple(self.settings.item_text_attributes))
                if not text:
                    if key in self.item_hashes:
                        removed.append(key)
                        del self.item_hashes[key]
                    continue
                digest = text_hash(text)
                if self.item_hashes.get(key) != digest:
                    changed.append((key, text, digest))
            if removed:
                self.index.remove(removed)
            if changed:
                vectors = self.embed([text for _, text, _ in changed], show_progress=show_progress)
                self.index.upsert(np.array([key for key, _, _ in changed]), vectors)
                for key, _, digest in changed:
                    self.item_hashes[key] = digest

    def embed_items(self, items: Sequence[ItemRecord], show_progress: bool = False) -> None:
        """Encode the items' texts into the caches (`sync_items` then finds them there)."""
        texts = [text for item in items
                 if (text := item_text(item, self.settings.item_text_template,
                                       tuple(self.settings.item_text_attributes)))]
        if texts:
            self.embed(texts, show_progress=show_progress)

    def save(self, path: Path) -> None:
        """Persist the index and which text each key was encoded from (see `load`)."""
        with self._lock:
            if self.index is None or self._encoder is None:
                return
            path.mkdir(parents=True, exist_ok=True)
            self.index.save(path / "index")
            meta = {"model_id": self._encoder.model_id, "item_hashes": {str(k): h for k, h in self.item_hashes.items()}}
            tmp = path / "items.json.tmp"
            tmp.write_text(json.dumps(meta))
            tmp.replace(path / "items.json")

    def load(self, path: Path) -> bool:
        """Reload a saved index for the same model; `sync_items` then re-encodes only the
        items whose text changed since. False (and nothing loaded) when it does not fit."""
        with self._lock:
            try:
                meta = json.loads((path / "items.json").read_text())
                if meta["model_id"] != self.model_id:
                    return False
                index = VectorIndex.load(path / "index")
            except (OSError, ValueError, KeyError):
                return False
            if index.dim != self.encoder.dim:
                return False
            self.index = index
            self.item_hashes = {int(k): h for k, h in meta["item_hashes"].items()}
            return True

    def item_vector(self, key: int) -> np.ndarray | None:
        return self.index.vector(key) if self.index is not None and key in self.index else None

    # -- users ----------------------------------------------------------------------------

    def set_user_text(self, user_id: str, text: str) -> None:
        with self._lock:
            if text.strip():
                self.stated[user_id] = self.embed([text])[0]
                self.stated_text[user_id] = text.strip()
            else:
                self.stated.pop(user_id, None)
                self.stated_text.pop(user_id, None)

    def apply(self, events: Iterable[EventRecord], weight: Callable[[str, float | None], float]) -> None:
        if self.index is None:
            return
        events = events if isinstance(events, Sequence) else list(events)
        index = self.catalog.index
        with self._lock:
            vectors = self.index.vectors_of([index[event.item_id] for event in events])
            has = vectors.any(axis=1).tolist()  # an item without a vector has a zero row
            negative_share = self.settings.semantic_negative_share
            profiles, rate = self.profiles, self._rate
            for event, vector, present in zip(events, vectors, has, strict=True):
                w = weight(event.type, event.value)
                if w == 0 or not present:
                    continue
                if w < 0:
                    w *= negative_share
                profile = profiles.get(event.user_id)
                if profile is None:
                    profile = profiles[event.user_id] = UserProfile(len(vector))
                profile.add(vector, w, event.timestamp, rate)

    def detached(self) -> SemanticState:
        """A view sharing the items (index, encoder, caches) with fresh behaviour profiles,
        for replaying part of the log (ranking/training.py); never `close` it."""
        with self._lock:
            twin = copy.copy(self)
            twin._lock = threading.RLock()
            twin.profiles = {}
            twin.stated = dict(self.stated)
            twin.stated_text = dict(self.stated_text)
            return twin

    def forget(self, user_id: str) -> None:
        with self._lock:
            self.profiles.pop(user_id, None)
            self.stated.pop(user_id, None)
            self.stated_text.pop(user_id, None)

    def profile(self, user_id: str) -> np.ndarray | None:
        """The user's unit-length semantic profile, or None for a user we know nothing of."""
        behaviour = self.profiles.get(user_id)
        stated = self.stated.get(user_id)
        vector = None
        if behaviour is not None:
            norm = float(np.linalg.norm(behaviour.vector.astype(np.float64)))
            if norm > 0:
                vector = behaviour.vector / norm
        if stated is not None:
            share = self.settings.semantic_text_weight if vector is not None else 1.0
            vector = stated * share + (vector * (1 - share) if vector is not None else 0.0)
        if vector is None:
            return None
        norm = float(np.linalg.norm(vector))
        return (vector / norm).astype(np.float32) if norm > 0 else None

    def close(self) -> None:
        self.db_cache.close()
        if self.shared_cache is not None:
            self.shared_cache.close()
