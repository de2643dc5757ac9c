"""Request bodies on /v1 are JSON. A form label is read as JSON (what `curl -d` sends
without -H); any other declared type is refused with 415 before the body is parsed, so
a client sending XML or multipart learns that, not a 422 about a missing field."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from kairos.api.asgi import send_error

_FORM = b"application/x-www-form-urlencoded"
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


def _is_json(media_type: bytes) -> bool:
    base = media_type.split(b";", 1)[0].strip().lower()
    return base == b"application/json" or (base.startswith(b"application/") and base.endswith(b"+json"))


class JsonBodies:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        declared = next((value for key, value in headers if key == b"content-type"), None)
        if declared is not None and declared.lower().startswith(_FORM):
            # In place: outer middleware reads what routing later writes into this scope.
            scope["headers"] = [(b"content-type", b"application/json") if key == b"content-type"
                                else (key, value) for key, value in headers]
        elif declared is not None and scope["method"] in _WITH_BODY and not _is_json(declared):
            media_type = declared.decode("latin-1")[:100]
            await send_error(send, 415, "unsupported_media_type",
                             "the request body must be JSON (Content-Type: application/json)",
                             {"field": "content-type", "got": media_type.encode("unicode_escape").decode()})
            return
        await self.app(scope, receive, send)
