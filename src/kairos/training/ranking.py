"""Training the ranking model for a live engine: `kairos train --model ranker`, the
background trainer after each behaviour model, and evaluation (ranking/training.py
does the work; this reads the engine's log and publishes the result)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kairos.ranking.model import RankingModel, RankingRegistry
from kairos.ranking.training import RankingInputs, train_ranking

if TYPE_CHECKING:
    from kairos.engine import Engine


def ranking_registry(engine: Engine) -> RankingRegistry:
    return RankingRegistry.beside(engine.model_registry())


def train_ranking_for(engine: Engine, exclude_seen: bool = True, quiet: bool = True,
                      publish: bool = False, install: bool = True) -> RankingModel:
    """Train on everything the engine's store holds, for the behaviour model it serves."""
    with engine.lock:
        events = [event for batch in engine.store.iter_events() for event in batch]
        inputs = RankingInputs(engine.settings, engine.catalog, events, engine.semantic,
                               engine.state.sequential, exclude_seen)
        model = train_ranking(inputs, quiet=quiet)
    if publish:
        ranking_registry(engine).publish(model)
    if install:
        engine.install_ranking(model)
    return model
