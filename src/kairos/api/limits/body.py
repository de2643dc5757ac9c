"""A request body beyond KAIROS_MAX_BODY_BYTES is refused with a 413 before it is read
whole: at once when Content-Length says so, else as soon as the streamed bytes pass it."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kairos.api.asgi import send_error


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send: Send) -> None:
        await send_error(send, 413, "payload_too_large",
                          f"the request body is over {self.max_bytes:,} bytes (KAIROS_MAX_BODY_BYTES)",
                          {"max_bytes": self.max_bytes})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._refuse(send)
                return
        received = 0
        refused = False

        async def counted() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            if not refused:  # the 413 is the answer; the app's own is dropped
                await send(message)

        await self.app(scope, counted, guarded)
