"""Candidate sources, one file each. Register a new one in SOURCE_FACTORIES."""

from __future__ import annotations

from collections.abc import Callable

from kairos.config import Settings
from kairos.sources.als import AlsSource
from kairos.sources.base import Candidates, CandidateSource, UserContext, top_k
from kairos.sources.covisit import CovisitSource
from kairos.sources.fresh import FreshSource
from kairos.sources.popular import PopularSource
from kairos.sources.semantic import SemanticSource
from kairos.sources.sequential import SequentialSource
from kairos.state.online import OnlineState

SourceFactory = Callable[[OnlineState, Settings], CandidateSource]

SOURCE_FACTORIES: dict[str, SourceFactory] = {
    "popular": lambda state, settings: PopularSource(state),
    "covisit": lambda state, settings: CovisitSource(state, settings.covisit_recent_items),
    "fresh": lambda state, settings: FreshSource(state.catalog),
    "semantic": lambda state, settings: SemanticSource(state),
    "sequential": lambda state, settings: SequentialSource(state, settings.factor_index_min_items),
    "als": lambda state, settings: AlsSource(state, settings.factor_index_min_items),
}


def build_sources(state: OnlineState, settings: Settings) -> dict[str, CandidateSource]:
    """Every registered source (the engine uses those with a fusion weight)."""
    return {name: factory(state, settings) for name, factory in SOURCE_FACTORIES.items()}


__all__ = [
    "SOURCE_FACTORIES",
    "AlsSource",
    "CandidateSource",
    "Candidates",
    "CovisitSource",
    "FreshSource",
    "PopularSource",
    "SemanticSource",
    "SequentialSource",
    "UserContext",
    "build_sources",
    "top_k",
]
