"""What the behaviour model trains on, read from the durable event log.

Each user's sequence is their visits (every event but impressions, dislikes and
skips) in time order, ties kept in acknowledgement order: exactly the order in
which the online state holds them, so the sequence served at request time is the
one the model learned from. Model item indices are 1..n over `item_ids` (0 pads).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kairos.config import Settings
from kairos.models import StepFeatures, event_token
from kairos.progress import progress
from kairos.schema import NON_VISIT_TYPES
from kairos.store import ItemRecord, Store
from kairos.text.compose import item_text

# texts -> (len(texts), dim) unit vectors (the language-model layer's `embed`)
Embed = Callable[[Sequence[str]], np.ndarray]


@dataclass
class TrainingData:
    item_ids: list[str]  # model index i + 1 is item_ids[i]
    sequences: dict[str, list[int]]  # user -> model item indices, oldest first
    features: dict[str, StepFeatures]  # user -> event tokens and timestamps, parallel
    text_vectors: np.ndarray | None  # (n_items + 1, dim); zero rows: padding, items without text
    events: int  # events read from the log

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def summary(self) -> dict[str, int | float]:
        lengths = np.array([len(s) for s in self.sequences.values()] or [0])
        return {"users": len(self.sequences), "items": self.n_items, "events": self.events,
                "visits": int(lengths.sum()), "median_length": float(np.median(lengths))}


def is_visit(event_type: str) -> bool:
    return event_type not in NON_VISIT_TYPES


def training_data(store: Store, settings: Settings, embed: Embed | None, quiet: bool = False) -> TrainingData:
    """Read the whole log once. Events acknowledged while this runs are left for the
    next training (it reads as many events as the log held when it started)."""
    total = store.count_events()
    steps: dict[str, list[tuple[float, int, str, str | None]]] = defaultdict(list)
    read = 0
    with progress("reading events", total, quiet=quiet or total < 100_000) as advance:
        for batch in store.iter_events():
            for event in batch[: total - read]:
                if is_visit(event.type):
                    # (timestamp, acknowledgement order) sorts as the online state inserts
                    steps[event.user_id].append((event.timestamp, read, event.item_id,
                                                 event_token(event.type, event.value)))
                read += 1
            advance(len(batch))
            if read >= total:
                break
    items = list(store.iter_items())
    used = {item_id for user_steps in steps.values() for _, _, item_id, _ in user_steps}
    # Items with an event or with text: an item with text but no event yet is still a
    # candidate (represented from its text alone).
    catalogue = [item for item in items if item.item_id in used or _has_text(item)]
    index = {item.item_id: i + 1 for i, item in enumerate(catalogue)}
    sequences: dict[str, list[int]] = {}
    features: dict[str, StepFeatures] = {}
    for user in sorted(steps):
        ordered = sorted(steps[user])
        sequences[user] = [index[item_id] for _, _, item_id, _ in ordered]
        features[user] = StepFeatures([token for *_, token in ordered], [t for t, *_ in ordered])
    return TrainingData([item.item_id for item in catalogue], sequences, features,
                        _text_vectors(catalogue, settings, embed) if embed is not None else None, read)


def _has_text(item: ItemRecord) -> bool:
    return bool(item.title or item.text or item.categories)


def _text_vectors(items: list[ItemRecord], settings: Settings, embed: Embed) -> np.ndarray | None:
    texts = [item_text(item, settings.item_text_template, tuple(settings.item_text_attributes)) for item in items]
    with_text = [i for i, text in enumerate(texts) if text]
    if not with_text:
        return None
    vectors = embed([texts[i] for i in with_text])
    out = np.zeros((len(items) + 1, vectors.shape[1]), dtype=np.float32)
    out[np.array(with_text) + 1] = vectors
    return out
