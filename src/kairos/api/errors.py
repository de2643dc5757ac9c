"""Every error is JSON {"error": {"code", "message", "details"}}; a caller's mistake is a 4xx."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kairos.engine import FeatureDisabled, NotFound

log = logging.getLogger("kairos.api")

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
}


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """('body', 'events', 3, 'type') -> 'events[3].type'; ('query', 'n') -> 'n'."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "body"


def _clean(message: str) -> str:
    return message.removeprefix("Value error, ")


def validation_details(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    details = []
    for error in errors:
        loc = tuple(error.get("loc", ()))
        detail: dict[str, Any] = {
            "field": field_path(loc),
            "message": _clean(str(error.get("msg", "invalid"))),
            "type": error.get("type"),
        }
        # The index of the offending element of a batch, for machines.
        if len(loc) >= 3 and loc[0] == "body" and isinstance(loc[2], int):
            detail["index"] = loc[2]
        details.append(detail)
    return details


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if errors and errors[0].get("type") == "json_invalid":
            # Unparseable is not invalid: name where the JSON broke, as a 400.
            position = errors[0]["loc"][-1] if errors[0].get("loc") else None
            return JSONResponse(error_body(
                "invalid_json", f"the request body is not valid JSON (at character {position}: "
                                f"{errors[0].get('ctx', {}).get('error', 'decode error')})",
                [{"field": "body", "position": position}]), status_code=400)
        details = validation_details(errors)
        first = details[0] if details else {"field": "body", "message": "invalid"}
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        message = f"{first['field']}: {first['message']}{more}"
        return JSONResponse(error_body("validation_error", message, details), status_code=422)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse(
            error_body("not_found", str(exc), {"kind": exc.kind, "id": exc.key}), status_code=404
        )

    @app.exception_handler(FeatureDisabled)
    async def _disabled(request: Request, exc: FeatureDisabled) -> JSONResponse:
        return JSONResponse(error_body("feature_disabled", str(exc)), status_code=503)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code == 400 and message == "There was an error parsing the body":
            message = "the request body could not be parsed as JSON (nested too deeply, or not JSON)"
        elif exc.status_code == 404 and message == "Not Found":
            message = f"no such path: {loggable(request.url.path)} (see /docs for the API)"
        return JSONResponse(
            error_body(code, message), status_code=exc.status_code, headers=exc.headers
        )


def loggable(text: str, limit: int = 200) -> str:
    """A caller's text as it may enter a log line: control characters escaped (no forged
    lines), cut to `limit` characters."""
    escaped = text.encode("unicode_escape").decode("ascii")
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."


class UnexpectedErrors:
    """A bug answers a JSON 500 and logs one traceback, with the path escaped. (An
    `Exception` handler would not do: Starlette re-raises after it, so the server logs
    the traceback a second time.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], loggable(scope["path"]))
            if started:
                return  # the answer is under way: the client sees a cut response
            response = JSONResponse(error_body("internal_error", "internal error; the server log has the details"),
                                    status_code=500)
            await response(scope, receive, send)
