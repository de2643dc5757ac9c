"""The in-memory catalogue: string item ids <-> dense indices, and what filters need."""

from __future__ import annotations

import numpy as np

from kairos.state.popularity import grown
from kairos.store.base import ItemRecord


class Catalog:
    """Items known to the engine. Indices are dense and never reused, so arrays over
    items (popularity, embeddings, masks) can be indexed by them."""

    generation = 0  # moves with every change (a class default: snapshots made before it load)

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.titles: list[str] = []
        self.categories: list[tuple[str, ...]] = []
        self._available = np.zeros(1024, dtype=bool)
        self._created_at = np.zeros(1024, dtype=np.float64)
        self._by_category: dict[str, set[int]] = {}
        self._newest_first: np.ndarray | None = None
        self._codes: np.ndarray | None = None  # (items, most categories of one item) category codes, -1 pad
        self._code_of: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.index

    @property
    def available(self) -> np.ndarray:
        return self._available[: len(self.ids)]

    @property
    def created_at(self) -> np.ndarray:
        return self._created_at[: len(self.ids)]

    def upsert(self, item: ItemRecord) -> int:
        self.generation += 1
        idx = self.index.get(item.item_id)
        if idx is None:
            idx = len(self.ids)
            if idx == len(self._available):
                self._available = grown(self._available, 2 * idx)
                self._created_at = grown(self._created_at, 2 * idx)
            self.ids.append(item.item_id)
            self.index[item.item_id] = idx
            self.titles.append("")
            self.categories.append(())
        else:
            for category in self.categories[idx]:
                self._by_category[category].discard(idx)
        self.titles[idx] = item.title
        if self.categories[idx] != tuple(item.categories) or idx == len(self.ids) - 1:
            self._codes = None
        self.categories[idx] = tuple(item.categories)
        for category in item.categories:
            self._by_category.setdefault(category, set()).add(idx)
        self._available[idx] = item.available
        if self._created_at[idx] != item.created_at or idx == len(self.ids) - 1:
            self._newest_first = None
        self._created_at[idx] = item.created_at
        return idx

    def set_available(self, idx: int, available: bool) -> None:
        self.generation += 1
        self._available[idx] = available

    def newest_first(self) -> np.ndarray:
        """Item indices by decreasing created_at (cached until an item is added or re-dated)."""
        if self._newest_first is None or len(self._newest_first) != len(self.ids):
            self._newest_first = np.argsort(-self.created_at, kind="stable")
        return self._newest_first

    def category_codes(self) -> tuple[np.ndarray, dict[str, int]]:
        """Each item's categories as codes in a padded matrix (-1: none), and the codes;
        rebuilt when an item arrives or changes categories."""
        if self._codes is None or len(self._codes) != len(self.ids):
            self._code_of = {name: code for code, name in enumerate(sorted(self._by_category))}
            width = max((len(c) for c in self.categories), default=0)
            codes = np.full((len(self.ids), max(width, 1)), -1, dtype=np.int32)
            for idx, names in enumerate(self.categories):
                codes[idx, : len(names)] = [self._code_of[name] for name in names]
            self._codes = codes
        return self._codes, self._code_of

    def category_mask(self, category: str) -> np.ndarray:
        mask = np.zeros(len(self.ids), dtype=bool)
        members = self._by_category.get(category)
        if members:
            mask[np.fromiter(members, dtype=np.int64, count=len(members))] = True
        return mask

    def category_names(self) -> list[str]:
        return sorted(name for name, members in self._by_category.items() if members)
