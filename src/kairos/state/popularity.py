"""Time-decayed popularity of items (global) and of categories."""

from __future__ import annotations

import numpy as np

from kairos.state.decay import RESCALE_EXPONENT, ForwardDecay


def grown(array: np.ndarray, size: int) -> np.ndarray:
    """A copy of `array` extended with zeros to `size` (np.resize would repeat it)."""
    out = np.zeros(size, dtype=array.dtype)
    out[: len(array)] = array
    return out


LEADERS_KEPT = 4_096  # the most popular items kept in order, so a request reads these only


class DecayedPopularity:
    # Derived, kept between requests (class defaults: snapshots made before them load).
    _total: float | None = None  # sum of every item's value
    _leaders: np.ndarray | None = None  # the LEADERS_KEPT most popular items, unordered
    _floor = 0.0  # the least value among them (0 when they are every engaged item)
    _ordered: tuple[np.ndarray, np.ndarray] | None = None  # the leaders by value, and values

    def __init__(self, half_life_s: float) -> None:
        self.decay = ForwardDecay(half_life_s)
        self._items = np.zeros(1024, dtype=np.float64)  # forward-decayed sums
        self._categories: dict[str, float] = {}

    def add(self, item: int, categories: tuple[str, ...], weight: float, t: float) -> None:
        factor = self.decay.rescale_needed(t)
        if factor is not None:
            self._items *= factor
            self._categories = {name: v * factor for name, v in self._categories.items()}
            self._total = None  # rescaled: what is derived is found again
            self._leaders = self._ordered = None
        if item >= len(self._items):
            self._items = grown(self._items, max(2 * len(self._items), item + 1))
        amount = weight * self.decay.weight(t)
        # Subtraction (forgetting a user) may leave float dust: clamp at zero.
        self._items[item] = max(self._items[item] + amount, 0.0)
        for name in categories:
            self._categories[name] = max(self._categories.get(name, 0.0) + amount, 0.0)
        if amount < 0:
            self._total = None
            self._leaders = self._ordered = None  # a leader may have fallen behind
        else:
            if self._total is not None:
                self._total += amount
            self._promote(np.array([item]))

    def add_many(self, items: np.ndarray, categories: list[tuple[str, ...]] | None, weights: np.ndarray,
                 times: np.ndarray) -> None:
        """Positive weights of a batch in one pass: the same sums as `add` event by event
        (which a batch crossing a rescale, or holding a subtraction, goes through)."""
        if len(items) == 0:
            return
        decay = self.decay
        if decay.landmark is None:
            decay.landmark = float(times[0])
        exponents = decay.rate * (times - decay.landmark)
        if float(exponents.max()) >= RESCALE_EXPONENT or float(weights.min()) < 0:
            for item, weight, t in zip(items.tolist(), weights.tolist(), times.tolist(), strict=True):
                self.add(item, categories[item] if categories is not None else (), weight, t)
            return
        top = int(items.max())
        if top >= len(self._items):
            self._items = grown(self._items, max(2 * len(self._items), top + 1))
        amounts = weights * np.exp(exponents)
        np.add.at(self._items, items, amounts)
        if categories is not None:
            sums = self._categories
            for item, amount in zip(items.tolist(), amounts.tolist(), strict=True):
                for name in categories[item]:
                    sums[name] = sums.get(name, 0.0) + amount
        if self._total is not None:
            self._total += float(amounts.sum())
        self._promote(items)

    def _promote(self, touched: np.ndarray) -> None:
        """After gains of `touched`: the leaders change order, and are found again if an
        item from outside them passed the least of them."""
        self._ordered = None
        if self._leaders is None:
            return
        rising = touched[self._items[touched] > self._floor]
        if len(rising) and not np.isin(rising, self._leaders).all():
            self._leaders = None

    def total(self) -> float:
        """The sum of every item's value (kept, not summed per request)."""
        if self._total is None:
            self._total = float(self._items.sum())
        return self._total

    def values(self, items: np.ndarray) -> np.ndarray:
        """Stored values of `items` (0 for an item never engaged with)."""
        inside = items < len(self._items)
        out = np.zeros(len(items), dtype=np.float64)
        out[inside] = self._items[items[inside]]
        return out

    def leaders(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """The most popular items, best first (ties: lower index), their values, and
        whether they are every item anyone engaged with. Found in one pass over the
        catalogue when an outsider overtakes one of them; otherwise re-ordered only."""
        if self._ordered is None:
            if self._leaders is None:
                positive = np.flatnonzero(self._items > 0)
                if len(positive) > LEADERS_KEPT:
                    positive = positive[np.argpartition(-self._items[positive], LEADERS_KEPT - 1)[:LEADERS_KEPT]]
                    self._floor = float(self._items[positive].min())
                else:
                    self._floor = 0.0
                self._leaders = positive
            leaders = self._leaders
            values = self._items[leaders]
            order = np.lexsort((leaders, -values))
            self._ordered = (leaders[order], values[order])
        items, values = self._ordered
        return items, values, self._floor == 0.0

    def engaged(self, item: int) -> bool:
        """Has anyone ever engaged positively with this item?"""
        return item < len(self._items) and self._items[item] > 0

    def engaged_many(self, items: np.ndarray) -> np.ndarray:
        """`engaged` of many catalogue indices, as a bool array."""
        items = np.asarray(items, dtype=np.int64)
        inside = items < len(self._items)
        out = np.zeros(len(items), dtype=bool)
        out[inside] = self._items[items[inside]] > 0
        return out

    def ranking_scores(self, n_items: int) -> np.ndarray:
        """Scores of items 0..n_items-1 proportional to their decayed popularity at any
        one moment (a new array). Rank by these: the decayed values themselves may
        underflow to zero long after the last event, the order never does."""
        scores = np.zeros(n_items, dtype=np.float64)
        known = min(n_items, len(self._items))
        scores[:known] = self._items[:known]
        return scores

    def item_scores(self, n_items: int, now: float) -> np.ndarray:
        """Decayed popularity of items 0..n_items-1 at `now` (a new array)."""
        return self.ranking_scores(n_items) * self.decay.now_factor(now)

    def category_scores(self, now: float) -> dict[str, float]:
        factor = self.decay.now_factor(now)
        return {name: value * factor for name, value in self._categories.items() if value > 0}
