"""Time-decayed popularity of items (global) and of categories."""

from __future__ import annotations

import numpy as np

from kairos.state.decay import RESCALE_EXPONENT, ForwardDecay


def grown(array: np.ndarray, size: int) -> np.ndarray:
    """A copy of `array` extended with zeros to `size` (np.resize would repeat it)."""
    out = np.zeros(size, dtype=array.dtype)
    out[: len(array)] = array
    return out


class DecayedPopularity:
    def __init__(self, half_life_s: float) -> None:
        self.decay = ForwardDecay(half_life_s)
        self._items = np.zeros(1024, dtype=np.float64)  # forward-decayed sums
        self._categories: dict[str, float] = {}

    def add(self, item: int, categories: tuple[str, ...], weight: float, t: float) -> None:
        factor = self.decay.rescale_needed(t)
        if factor is not None:
            self._items *= factor
            self._categories = {name: v * factor for name, v in self._categories.items()}
        if item >= len(self._items):
            self._items = grown(self._items, max(2 * len(self._items), item + 1))
        amount = weight * self.decay.weight(t)
        # Subtraction (forgetting a user) may leave float dust: clamp at zero.
        self._items[item] = max(self._items[item] + amount, 0.0)
        for name in categories:
            self._categories[name] = max(self._categories.get(name, 0.0) + amount, 0.0)

    def add_many(self, items: np.ndarray, categories: list[tuple[str, ...]] | None, weights: np.ndarray,
                 times: np.ndarray) -> None:
        """Positive weights of a batch in one pass: the same sums as
        `add` event by event (which a batch crossing a rescale, or a subtraction, uses)."""
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

    def engaged(self, item: int) -> bool:
        """Has anyone ever engaged positively with this item?"""
        return item < len(self._items) and self._items[item] > 0

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
