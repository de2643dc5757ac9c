"""What the serving path reads: the online state a replica keeps (the Engine)."""

from __future__ import annotations

import threading
from typing import Any, Protocol

from kairos.clock import Clock
from kairos.config import Settings
from kairos.ranking.model import RankingModel
from kairos.ranking.rules import ListRule
from kairos.sources import CandidateSource
from kairos.state import Catalog, OnlineState
from kairos.state.semantic import SemanticState
from kairos.store import Store


class ServingView(Protocol):
    settings: Settings
    store: Store
    clock: Clock
    catalog: Catalog
    state: OnlineState
    semantic: SemanticState | None
    sources: dict[str, CandidateSource]
    ranking: RankingModel | None
    list_rules: list[ListRule]

    @property
    def lock(self) -> threading.RLock:
        """Held while the state changes: reads hold it for a consistent view."""

    @property
    def model_version(self) -> str: ...

    def catch_up(self) -> Any:
        """Apply what the log gained (a user's next read reflects their last write)."""
