"""OnlineState: everything the recommendation path reads, kept current event by event."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

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
        self.covisit = Covisitation(settings.covisit_half_life_s)
        self.events_applied = 0
        self.semantic: SemanticState | None = None  # set by the engine when the LM layer is on
        self.sequential: ServedSequential | None = None  # set by the engine when a model serves
        self.als: AlsModel | None = None  # set by the engine when a factorisation serves

    def apply(self, events: Iterable[EventRecord]) -> None:
        for event in events:
            self._apply(event, self.users, +1.0)
            self.events_applied += 1

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
                previous = [
                    step.item
                    for step in user.previous_visits(
                        position, t - settings.covisit_window_s, settings.covisit_lookback
                    )
                    if step.item != item
                ]
                if previous:
                    self.covisit.add_visit(
                        item, previous, sign, sign * settings.covisit_backward_weight, t
                    )
        if weight > 0:
            self.popularity.add(item, self.catalog.categories[item], sign * weight, t)
            self.trending.add(item, (), sign * weight, t)
