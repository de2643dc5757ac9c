"""Serving replicas that follow the durable log.

The store's event log (and its change feed for items and users) is the source of
truth. Each serving process keeps its own online state and moves it forward only by
reading the log past its own position (`follower.py`), so any process may write, a
process may crash or start at any time, and a restart loses nothing. One process per
database holds the leader lease (`leader.py`) and runs the background jobs: training,
the push decider and delivery, the language model's worker.
"""

from kairos.replica.follower import Applier, LogFollower
from kairos.replica.leader import LeaderLease

__all__ = ["Applier", "LeaderLease", "LogFollower"]
