"""What the behaviour model reads, as arrays: per-step side information (StepFeatures,
event_token, gap_buckets), a user's sequence encoded as model inputs (_Encoded,
_encode_user), the right-padded training windows and their seeded, length-bucketed
batches (_Windows, _training_windows, _batches, _pad, _trim), the validation set of
each user's last item (_Validation, _validation), the text-vector table (_text_table)
and the fingerprint of the training data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kairos.models.sequential.config import SeqRecConfig

# Time gaps: 0 padding, 1 "no previous step", then 2 + floor(log2(1 + seconds)), capped.
GAP_BUCKETS = 34
UNKNOWN_TYPE = 1  # event-type ids: 0 padding, 1 a type not seen in training


@dataclass(frozen=True)
class StepFeatures:
    """Per-step side information, parallel to a user's item list."""

    types: Sequence[str]  # event tokens, see `event_token`
    timestamps: Sequence[float]


def event_token(event_type: str, value: float | None) -> str:
    """What the model sees of an event: its type, and a rating's value to the half star
    (a 1-star rating says something quite different from a 5-star one)."""
    if event_type == "rating" and value is not None:
        return f"rating:{round(value * 2) / 2:g}"
    return event_type


def gap_buckets(timestamps: Sequence[float]) -> np.ndarray:
    """Log-scale buckets of the time since the previous step (1 for the first step)."""
    ts = np.asarray(timestamps, dtype=np.float64)
    out = np.ones(len(ts), dtype=np.int64)
    if len(ts) > 1:
        gaps = np.maximum(np.diff(ts), 0.0)
        out[1:] = 2 + np.minimum(np.floor(np.log2(1.0 + gaps)), GAP_BUCKETS - 3).astype(np.int64)
    return out


@dataclass
class _Windows:
    """Right-padded training windows (W, max_len): inputs, targets (W, max_len, horizon), features."""

    items: np.ndarray
    targets: np.ndarray
    types: np.ndarray | None
    gaps: np.ndarray | None
    lengths: np.ndarray


@dataclass
class _Validation:
    items: np.ndarray  # (U, max_len) right-padded histories
    types: np.ndarray | None
    gaps: np.ndarray | None
    targets: np.ndarray  # (U,)
    seen: np.ndarray | None  # (U, S) padded with 0: items to exclude from the ranking


@dataclass
class _Encoded:
    """A user's sequence as model inputs: items, and event-type ids and gap buckets."""

    items: np.ndarray
    types: np.ndarray | None
    gaps: np.ndarray | None


def _encode_user(items: Sequence[int], features: StepFeatures | None, vocab: Mapping[str, int] | None) -> _Encoded:
    array = np.asarray(items, dtype=np.int64)
    if vocab is None:
        return _Encoded(array, None, None)
    if features is None:
        return _Encoded(array, np.full(len(array), UNKNOWN_TYPE, dtype=np.int64), np.ones(len(array), dtype=np.int64))
    if len(features.types) != len(array) or len(features.timestamps) != len(array):
        raise ValueError("features must be parallel to the item list")
    types = np.fromiter((vocab.get(t, UNKNOWN_TYPE) for t in features.types), dtype=np.int64, count=len(array))
    return _Encoded(array, types, gap_buckets(features.timestamps))


def _pad(rows: Sequence[np.ndarray], width: int) -> np.ndarray:
    """Right-padded (len(rows), width, ...), keeping each row's last `width` values."""
    out = np.zeros((len(rows), width, *(rows[0].shape[1:] if len(rows) else ())), dtype=np.int64)
    for i, row in enumerate(rows):
        row = row[-width:]
        out[i, : len(row)] = row
    return out


def _training_windows(users: Sequence[_Encoded], max_len: int, horizon: int = 1) -> _Windows:
    """Every position of every training sequence is a target once: long sequences are
    cut, from the end, into windows of at most max_len steps. Targets (W, max_len,
    horizon): the next `horizon` items after each input step, 0 past the end."""
    items, targets, types, gaps = [], [], [], []
    ahead = np.arange(1, horizon + 1)
    for user in users:
        n = len(user.items) - 1  # inputs 0..n-1 predict items 1..n
        for end in range(n, 0, -max_len):
            start = max(0, end - max_len)
            items.append(user.items[start:end])
            later = np.arange(start, end)[:, None] + ahead[None, :]
            targets.append(np.where(later <= n, user.items[np.minimum(later, n)], 0))
            if user.types is not None and user.gaps is not None:
                types.append(user.types[start:end])
                gaps.append(user.gaps[start:end])
    return _Windows(
        _pad(items, max_len), _pad(targets, max_len),
        _pad(types, max_len) if types else None, _pad(gaps, max_len) if gaps else None,
        np.array([len(w) for w in items], dtype=np.int64),
    )


def _batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of windows of similar length (less padding), seeded."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * 16
    batches: list[np.ndarray] = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def _trim(array: np.ndarray | None, rows: np.ndarray, length: int) -> torch.Tensor | None:
    return None if array is None else torch.from_numpy(np.ascontiguousarray(array[rows, :length]))


def fingerprint(sequences: Mapping[str, Sequence[int]], n_items: int, text_vectors: np.ndarray | None,
                features: Mapping[str, StepFeatures] | None = None) -> str:
    """What the model was trained on, as 16 hex digits (same data, same fingerprint)."""
    digest = hashlib.sha256(f"{n_items}\n".encode())
    for user in sorted(sequences):
        digest.update(user.encode() + b"\t" + np.asarray(sequences[user], dtype=np.int64).tobytes())
        if features and user in features:
            digest.update("\x1f".join(features[user].types).encode())
            digest.update(np.asarray(features[user].timestamps, dtype=np.float64).tobytes())
    if text_vectors is not None:
        digest.update(np.ascontiguousarray(text_vectors, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def _text_table(text_vectors: np.ndarray | None, n_items: int) -> torch.Tensor | None:
    """Accept n_items rows (items 1..n) or n_items + 1 rows (row 0 padding)."""
    if text_vectors is None:
        return None
    vectors = np.asarray(text_vectors, dtype=np.float32)
    if len(vectors) == n_items:
        vectors = np.vstack([np.zeros((1, vectors.shape[1]), dtype=np.float32), vectors])
    if len(vectors) != n_items + 1:
        raise ValueError(f"text_vectors has {len(vectors)} rows; expected {n_items} or {n_items + 1}")
    vectors = vectors.copy()
    vectors[0] = 0.0
    return torch.from_numpy(vectors)


def _validation(users: Sequence[_Encoded], config: SeqRecConfig, rng: np.random.Generator) -> _Validation:
    """The last given item of each user (with a history before it) is the target."""
    chosen = [u for u in users if len(u.items) >= 2]
    if config.valid_users is not None and len(chosen) > config.valid_users:
        keep = np.sort(rng.choice(len(chosen), config.valid_users, replace=False))
        chosen = [chosen[i] for i in keep]
    histories = [u.items[:-1] for u in chosen]
    seen = None
    if config.exclude_seen:
        unique = [np.unique(h) for h in histories]
        seen = _pad(unique, max((len(s) for s in unique), default=1))
    return _Validation(
        _pad(histories, config.max_len),
        _pad([u.types[:-1] for u in chosen], config.max_len) if chosen and chosen[0].types is not None else None,
        _pad([u.gaps[:-1] for u in chosen], config.max_len) if chosen and chosen[0].gaps is not None else None,
        np.array([u.items[-1] for u in chosen], dtype=np.int64), seen,
    )
