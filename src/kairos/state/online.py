"""OnlineState: everything the recommendation path reads, kept current event by event."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from kairos.config import Settings
from kairos.schema import NON_VISIT_TYPES, EventType
from kairos.state.catalog import Catalog
from kairos.state.covisit import Covisitation
from kairos.state.popularity import DecayedPopularity
from kairos.state.users import SequenceStep, UserState
from kairos.store.base import EventRecord

if TYPE_CHECKING:
    from kairos.models.als import AlsModel
    from kairos.sources.sequential import ServedSequential
    from kairos.state.semantic import SemanticState


class OnlineState:
    """Per-user sequences and seen sets, decayed popularity and co-visitation.

    `apply` is the only way events enter; `forget` replays a user's events with the
    opposite sign, so forgetting removes exactly what that user contributed.
    """

    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self.users: dict[str, UserState] = {}
        self.popularity = DecayedPopularity(settings.popularity_half_life_s)
        self.trending = DecayedPopularity(settings.trend_half_life_s)  # short memory: the ranker's trend
        self.covisit = Covisitation(settings.covisit_half_life_s, settings.covisit_max_neighbours)
        self.events_applied = 0
        self.semantic: SemanticState | None = None  # set by the engine when the LM layer is on
        self.sequential: ServedSequential | None = None  # set by the engine when a model serves
        self.als: AlsModel | None = None  # set by the engine when a factorisation serves

    def apply(self, events: Iterable[EventRecord]) -> None:
        """Events in log order. Sequences and co-visitation move event by event (each
        reads the user's sequence so far); popularity and trend sum once per batch."""
        settings = self.settings
        index, categories = self.catalog.index, self.catalog.categories
        users, covisit = self.users, self.covisit
        length, lookback = settings.sequence_length, settings.covisit_lookback
        window, backward = settings.covisit_window_s, settings.covisit_backward_weight
        weights: dict[str, float] = {}  # per event type, this batch (ratings depend on the value)
        engaged_items: list[int] = []
        engaged_weights: list[float] = []
        engaged_times: list[float] = []
        applied = 0
        for event in events:
            item = index[event.item_id]
            t, kind = event.timestamp, str(event.type)
            weight = weights.get(kind)
            if weight is None:
                weight = settings.event_weight(kind, event.value)
                if kind != EventType.rating:
                    weights[kind] = weight
            user = users.get(event.user_id)
            if user is None:
                user = users[event.user_id] = UserState()
            user.event_count += 1
            user.touch()
            if kind != EventType.impression:
                visit = kind not in NON_VISIT_TYPES
                position = user.insert(SequenceStep(item, kind, t, event.value, weight, visit), length)
                if visit:
                    user.seen.add(item)
                    previous = user.visits_before(position, t - window, lookback, item)
                    if previous:
                        covisit.add_visit(item, previous, 1.0, backward, t)
            if weight > 0:
                engaged_items.append(item)
                engaged_weights.append(weight)
                engaged_times.append(t)
            applied += 1
        self.events_applied += applied
        if engaged_items:
            batch = (np.array(engaged_items, dtype=np.int64), np.array(engaged_weights),
                     np.array(engaged_times))
            self.popularity.add_many(batch[0], categories, batch[1], batch[2])
            self.trending.add_many(batch[0], None, batch[1], batch[2])

    def forget(self, user_id: str, events: Iterable[EventRecord]) -> None:
        """Remove a user: `events` are their events in the order they were applied."""
        replay: dict[str, UserState] = {}
        for event in events:
            self._apply(event, replay, -1.0)
            self.events_applied -= 1
        self.users.pop(user_id, None)

    def _apply(self, event: EventRecord, users: dict[str, UserState], sign: float) -> None:
        settings = self.settings
        item = self.catalog.index[event.item_id]
        t = event.timestamp
        weight = settings.event_weight(event.type, event.value)
        user = users.get(event.user_id)
        if user is None:
            user = users[event.user_id] = UserState()
        user.event_count += 1
        user.touch()
        if event.type != EventType.impression:
            visit = event.type not in NON_VISIT_TYPES
            step = SequenceStep(item, str(event.type), t, event.value, weight, visit)
            position = user.insert(step, settings.sequence_length)
            if visit:
                user.seen.add(item)
                previous = user.visits_before(position, t - settings.covisit_window_s,
                                              settings.covisit_lookback, item)
                if previous:
                    self.covisit.add_visit(
                        item, previous, sign, sign * settings.covisit_backward_weight, t
                    )
        if weight > 0:
            self.popularity.add(item, self.catalog.categories[item], sign * weight, t)
            self.trending.add(item, (), sign * weight, t)
