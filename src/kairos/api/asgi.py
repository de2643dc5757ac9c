"""Answering from ASGI middleware, before routing: the same JSON error body as the
handlers in errors.py."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Send

from kairos.api.errors import error_body


async def send_error(send: Send, status: int, code: str, message: str, details: Any = None,
                     headers: dict[str, str] | None = None) -> None:
    body = json.dumps(error_body(code, message, details)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def send_redirect(send: Send, location: str) -> None:
    """303 See Other to `location` (ours, a constant path)."""
    await send({"type": "http.response.start", "status": 303,
                "headers": [(b"location", location.encode()), (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})
