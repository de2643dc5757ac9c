"""The candidate-source protocol: one class, one method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

from kairos.state.users import UserState

SEEN_KEY = "user.seen"  # UserContext.extra: the seen items as an array


@dataclass(slots=True)
class UserContext:
    """What a source may know about one request."""

    user_id: str
    now: float
    user: UserState | None
    allowed: np.ndarray  # bool over catalogue indices: the request's filters, already applied
    category: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def seen_items(self) -> np.ndarray:
        """Catalogue indices of every item the user has visited (once per request)."""
        kept = self.extra.get(SEEN_KEY)
        if kept is None:
            seen = self.user.seen if self.user is not None else ()
            kept = self.extra[SEEN_KEY] = np.fromiter(seen, dtype=np.int64, count=len(seen))
        return kept  # type: ignore[return-value]


class Candidates(NamedTuple):
    """Catalogue indices and their scores, best first."""

    items: np.ndarray
    scores: np.ndarray

    @staticmethod
    def empty() -> Candidates:
        return Candidates(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64))


class CandidateSource(Protocol):
    name: str

    def candidates(self, ctx: UserContext, k: int) -> Candidates:
        """Up to k allowed items for this user, best first."""
        ...

    def explain(self, ctx: UserContext, item: int) -> str | None:
        """A short, true reason this source proposed `item` (for the final list only).
        A source may also offer `explain_many(ctx, items) -> list[str | None]`, the same
        for a whole list at once; serving uses it where present."""
        ...


_ACTIONS = {"view": "viewed", "click": "clicked", "like": "liked", "cart": "added to your cart",
            "share": "shared", "purchase": "bought"}


def action_phrase(event_type: str, value: float | None) -> str:
    """'rated 5', 'bought', ... — what the user did, for explanations."""
    if event_type == "rating" and value is not None:
        return f"rated {value:g}"
    return _ACTIONS.get(event_type, event_type)


def top_k(scores: np.ndarray, k: int, allowed: np.ndarray | None = None) -> Candidates:
    """The k highest positive scores among allowed items, best first (ties: lower index)."""
    keep = scores > 0
    if allowed is not None:
        keep &= allowed
    positive = np.flatnonzero(keep)
    if len(positive) > k:
        part = np.argpartition(-scores[positive], k - 1)[:k]
        positive = positive[part]
    order = np.lexsort((positive, -scores[positive]))
    chosen = positive[order]
    return Candidates(chosen, scores[chosen])
