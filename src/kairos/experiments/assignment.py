"""Which arm a user is in: a pure function of (experiment, user), so the same user gets
the same arm on every request, every worker and after every restart."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from kairos.experiments.schema import Arm


def bucket(experiment_id: str, user_id: str) -> float:
    """A uniform number in [0, 1) from the pair (SHA-256: no correlation across experiments)."""
    digest = hashlib.sha256(f"{experiment_id}\x00{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign(experiment_id: str, user_id: str, arms: Sequence[Arm]) -> Arm:
    point = bucket(experiment_id, user_id)
    edge = 0.0
    for arm in arms:
        edge += arm.traffic
        if point < edge:
            return arm
    return arms[-1]  # traffic adds up to 1 within rounding
