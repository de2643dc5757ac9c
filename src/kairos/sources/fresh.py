"""`fresh`: the newest available items, so a catalogue with no events yet still answers."""

from __future__ import annotations

import numpy as np

from kairos.sources.base import Candidates, UserContext
from kairos.state.catalog import Catalog


class FreshSource:
    name = "fresh"

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def candidates(self, ctx: UserContext, k: int) -> Candidates:
        order = self.catalog.newest_first()
        # The newest allowed, scanning from the newest a block at a time (not the catalogue).
        found: list[np.ndarray] = []
        have, start, block = 0, 0, max(4 * k, 1024)
        while have < k and start < len(order):
            chunk = order[start : start + block]
            chunk = chunk[ctx.allowed[chunk]]
            found.append(chunk)
            have += len(chunk)
            start += block
            block *= 2
        newest = np.concatenate(found)[:k] if found else order[:0]
        # Score 1, 1/2, 1/3...: fusion needs an order here, not a magnitude.
        return Candidates(newest, 1.0 / (1.0 + np.arange(len(newest), dtype=np.float64)))

    def explain(self, ctx: UserContext, item: int) -> str | None:
        return "new arrival"
