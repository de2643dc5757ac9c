"""Online state, updated synchronously on ingest and rebuilt from the store at start-up."""

from kairos.state.catalog import Catalog
from kairos.state.online import OnlineState
from kairos.state.users import SequenceStep, UserState

__all__ = ["Catalog", "OnlineState", "SequenceStep", "UserState"]
