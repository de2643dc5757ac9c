"""The Python client of the Kairos API: `Kairos` (blocking) and `AsyncKairos` (asyncio).

    from kairos.client import Kairos

    with Kairos("http://127.0.0.1:8000", api_key="...") as kairos:
        kairos.send_events([{"user_id": "u1", "item_id": "i1", "type": "click"}])
        print(kairos.recommendations("u1", n=5).items)

It needs only httpx, httpx-sse and pydantic: importing it loads no model and no server.
Answers are the API's own models (kairos.schema, kairos.push.schema, ...); errors are
KairosError subclasses (kairos.client.errors). calls.py lists every endpoint once.
"""

from kairos.client.aio import AsyncKairos, AsyncStream
from kairos.client.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    KairosError,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
)
from kairos.client.retry import Retries
from kairos.client.sync import Kairos, Stream

__all__ = ["AsyncKairos", "AsyncStream", "Conflict", "Forbidden", "InvalidRequest", "Kairos", "KairosError",
           "NotFound", "RateLimited", "Retries", "ServerError", "Stream", "Unauthorized", "Unavailable"]
