"""The serving path: what a read request runs. It reads the online state (under the
state's lock, never a store write), asks the candidate sources, fuses or ranks their
lists and explains each item. Nothing here changes state; the ingest path (ingest/)
writes, and the state moves only by the log (replica/follower.py -> Engine.apply_*).

    view.py        what serving reads (the Engine provides it)
    recommend.py   GET /v1/recommendations: context, sources, fusion/ranker, slots, rules
    similar.py     GET /v1/items/{id}/similar
    search.py      GET /v1/search
    users.py       GET /v1/users/{id}
"""

from kairos.serving.recommend import Recommender
from kairos.serving.search import search
from kairos.serving.similar import similar
from kairos.serving.users import user_view
from kairos.serving.view import ServingView

__all__ = ["Recommender", "ServingView", "search", "similar", "user_view"]
