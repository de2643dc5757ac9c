"""An inner-product index over a served model's item vectors, built in the background.

A factor model scores every item per request (a matrix-vector product over the whole
catalogue: ~20 ms at 1M items). Past `min_items` items its top candidates come from an
`InnerProductIndex` instead (~0.6 ms at 1M), built once per model in a thread when the
model is first asked (seconds at 100k items, ~30 s at 1M); until it is ready, and below
`min_items`, the model scores every item as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import numpy as np

from kairos.index import InnerProductIndex

log = logging.getLogger(__name__)


class FactorIndex:
    def __init__(self, min_items: int) -> None:
        self.min_items = min_items  # 0: never
        self._lock = threading.Lock()
        self._model: object | None = None  # the model the index (being) built belongs to
        self._index: InnerProductIndex | None = None

    def get(self, model: object, n_items: int,
            vectors: Callable[[], tuple[np.ndarray, np.ndarray]]) -> InnerProductIndex | None:
        """The index of `model`'s item vectors (`vectors()`: rows and their keys), or None
        while it is built or when the catalogue is too small to need one."""
        if self.min_items <= 0 or n_items < self.min_items:
            return None
        with self._lock:
            if self._model is model:
                return self._index
            self._model, self._index = model, None
        threading.Thread(target=self._build, args=(model, vectors), name="kairos-factor-index", daemon=True).start()
        return None

    def _build(self, model: object, vectors: Callable[[], tuple[np.ndarray, np.ndarray]]) -> None:
        try:
            rows, keys = vectors()
            index = InnerProductIndex(rows, keys, exact_max=0)
        except Exception:  # the model keeps scoring every item
            log.exception("could not build the inner-product index of %s", type(model).__name__)
            return
        with self._lock:
            if self._model is model:
                self._index = index
