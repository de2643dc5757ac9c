"""Item-to-item co-visitation: how often two items are visited one after the other."""

from __future__ import annotations

import numpy as np

from kairos.state.decay import ForwardDecay

_DUST = 1e-9  # below this (relative to one visit) a subtracted count is gone
# A row is cut back to its cap once it holds this many times the cap: one sort per cap's
# worth of new neighbours, not one per visit.
_SLACK = 2.0
_ARRAYS_KEPT = 4096  # rows kept as arrays for requests (row_arrays)
_NO_ITEMS = np.empty(0, dtype=np.int64)
_NO_COUNTS = np.empty(0, dtype=np.float64)


class Covisitation:
    """Time-decayed, directed counts c[a][b]: a visit of b followed one of a (and,
    added symmetrically by the caller, the reverse)."""

    def __init__(self, half_life_s: float, max_neighbours: int = 0) -> None:
        """`max_neighbours`: a row keeps its strongest this many (0: every one), so memory
        is bounded by items x 2 x max_neighbours however long the log grows. The row's total
        still counts every visit: a kept neighbour's share is what it was."""
        self.decay = ForwardDecay(half_life_s)
        self.max_neighbours = max_neighbours
        self._prune_at = int(max_neighbours * _SLACK) if max_neighbours else 0
        self._neighbours: dict[int, dict[int, float]] = {}
        self._totals: dict[int, float] = {}
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}

    def add_visit(self, item: int, previous: list[int], forward: float, backward: float, t: float) -> None:
        """A visit of `item` at t after visits of `previous`: previous->item gains `forward`,
        item->previous `backward` (negative weights subtract, for forgetting)."""
        factor = self.decay.rescale_needed(t)
        if factor is not None:
            self._rescale(factor)
        scale = self.decay.weight(t)
        if forward > 0 and backward >= 0:  # applying (not forgetting): sums only, inlined
            rows, totals, arrays = self._neighbours, self._totals, self._arrays
            gain = forward * scale
            for other in previous:
                arrays.pop(other, None)
                row = rows.get(other)
                if row is None:
                    row = rows[other] = {}
                row[item] = row.get(item, 0.0) + gain
                totals[other] = totals.get(other, 0.0) + gain
                if self._prune_at and len(row) > self._prune_at:
                    self._prune(row)
            if backward:
                gain = backward * scale
                arrays.pop(item, None)
                row = rows.get(item)
                if row is None:
                    row = rows[item] = {}
                total = totals.get(item, 0.0)
                for other in previous:
                    row[other] = row.get(other, 0.0) + gain
                    total += gain
                totals[item] = total
                if self._prune_at and len(row) > self._prune_at:
                    self._prune(row)
            return
        for other in previous:
            self._add(other, item, forward * scale)
            if backward:
                self._add(item, other, backward * scale)

    def _add(self, a: int, b: int, amount: float) -> None:
        self._arrays.pop(a, None)
        row = self._neighbours.get(a)
        if row is None:
            row = self._neighbours[a] = {}
        value = row.get(b, 0.0) + amount
        total = self._totals.get(a, 0.0) + amount
        if amount > 0:
            row[b] = value
            self._totals[a] = total
            return
        # Subtraction: what is left of an exact removal is float dust.
        if value <= _DUST * -amount:
            row.pop(b, None)
        else:
            row[b] = value
        if row:
            self._totals[a] = max(total, 0.0)
        else:
            self._neighbours.pop(a, None)
            self._totals.pop(a, None)

    def __getstate__(self) -> dict[str, object]:
        return {name: value for name, value in self.__dict__.items() if name != "_arrays"}  # a cache

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._arrays = {}

    def _prune(self, row: dict[int, float]) -> None:
        """Keep the row's `max_neighbours` strongest (ties by item, so every replica that
        applies the same events keeps the same ones)."""
        items = np.fromiter(row.keys(), dtype=np.int64, count=len(row))
        counts = np.fromiter(row.values(), dtype=np.float64, count=len(row))
        kept = np.lexsort((items, -counts))[: self.max_neighbours]
        row.clear()
        row.update(zip(items[kept].tolist(), counts[kept].tolist(), strict=True))

    def row_arrays(self, a: int) -> tuple[np.ndarray, np.ndarray, float]:
        """`neighbours(a)` as arrays (items, counts) and the total, kept until the row
        changes (every change drops them)."""
        row, total = self._neighbours.get(a), self._totals.get(a, 0.0)
        if not row:
            return _NO_ITEMS, _NO_COUNTS, total
        kept = self._arrays.get(a)
        if kept is not None:
            return kept
        items = np.fromiter(row.keys(), dtype=np.int64, count=len(row))
        counts = np.fromiter(row.values(), dtype=np.float64, count=len(row))
        items.flags.writeable = counts.flags.writeable = False  # shared by requests
        kept = (items, counts, total)
        if len(self._arrays) >= _ARRAYS_KEPT:
            self._arrays.clear()  # rows read again are rebuilt; a bound, not an LRU
        self._arrays[a] = kept
        return kept

    def neighbours(self, a: int) -> tuple[dict[int, float], float]:
        """Forward-decayed counts of a's neighbours and their sum (both share one decay
        factor, so the ratio is the decayed conditional frequency)."""
        return self._neighbours.get(a, {}), self._totals.get(a, 0.0)

    def column(self, b: int) -> tuple[list[int], list[float]]:
        """Every item a with b among its neighbours, and P(next = b | a) (decayed): one
        pass over the rows, for scoring one item for many users."""
        sources, shares = [], []
        totals = self._totals
        for a, row in self._neighbours.items():
            value = row.get(b)
            if value is not None and totals.get(a, 0.0) > 0:
                sources.append(a)
                shares.append(value / totals[a])
        return sources, shares

    def count(self, a: int, b: int, now: float) -> float:
        return self._neighbours.get(a, {}).get(b, 0.0) * self.decay.now_factor(now)

    def n_pairs(self) -> int:
        return sum(len(row) for row in self._neighbours.values())

    def _rescale(self, factor: float) -> None:
        self._arrays.clear()
        for row in self._neighbours.values():
            for b in row:
                row[b] *= factor
        self._totals = {a: v * factor for a, v in self._totals.items()}
