"""A path and query string beyond MAX_URL_BYTES get a JSON 414 before any work (past
the HTTP parser's own ~64 KiB limit, api/protocol.py answers a JSON 400)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from kairos.api.asgi import send_error

MAX_URL_BYTES = 16 * 1024


class UrlLengthLimit:
    def __init__(self, app: ASGIApp, max_bytes: int = MAX_URL_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string", b""))
            if size > self.max_bytes:
                await send_error(send, 414, "uri_too_long",
                                 f"the path and query string are {size:,} bytes, over {self.max_bytes:,}",
                                 {"max_bytes": self.max_bytes})
                return
        await self.app(scope, receive, send)
