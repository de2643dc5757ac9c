"""Requests a second per API key (KAIROS_RATE_LIMIT), per client address where keys
are off: beyond it a 429 with Retry-After, before any work is done."""

from __future__ import annotations

import math

from starlette.types import ASGIApp, Receive, Scope, Send

from kairos.api.asgi import send_error
from kairos.api.auth.middleware import KEY_ID
from kairos.api.auth.scopes import OPEN_PATHS
from kairos.api.limits.buckets import Buckets


def caller(scope: Scope) -> str:
    key_id = scope.get(KEY_ID)
    if key_id:
        return f"key:{key_id}"
    client = scope.get("client")
    return f"addr:{client[0]}" if client else "addr:?"


class RequestRateLimit:
    def __init__(self, app: ASGIApp, buckets: Buckets) -> None:
        self.app = app
        self.buckets = buckets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        who = caller(scope)
        short = self.buckets.wait_for({who: 1.0})
        if short:
            wait = math.ceil(short[who])
            await send_error(send, 429, "rate_limited",
                             f"more than {self.buckets.rate:g} requests a second; retry in {wait} s",
                             {"limit_per_second": self.buckets.rate, "retry_after_s": wait},
                             headers={"Retry-After": str(wait)})
            return
        await self.app(scope, receive, send)
