"""Typed errors: each carries the API's error code, message and details (the field a 4xx
names), the HTTP status and the request id to quote in a bug report."""

from __future__ import annotations

from typing import Any

import httpx


class KairosError(Exception):
    """The base of every error the client raises."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None,
                 details: Any = None, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details = details
        self.request_id = request_id

    @property
    def field(self) -> str | None:
        """The field the server named (a 4xx for bad input always names one)."""
        details = self.details
        if isinstance(details, list) and details and isinstance(details[0], dict):
            return details[0].get("field")
        if isinstance(details, dict):
            return details.get("field")
        return None


class InvalidRequest(KairosError):
    """400, 413, 415, 422: the request was wrong; nothing was changed."""


class Unauthorized(KairosError):
    """401: no API key, or an unknown one."""


class Forbidden(KairosError):
    """403: the key lacks the scope (read, ingest, admin) this call needs."""


class NotFound(KairosError):
    """404: no such user, item, campaign, experiment, model or notification."""


class Conflict(KairosError):
    """409: e.g. training already running, an experiment already running, an
    Idempotency-Key reused with another batch."""


class RateLimited(KairosError):
    """429, after the client's retries: `retry_after` seconds, as the server said."""

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class ServerError(KairosError):
    """5xx, after the client's retries (503 `feature_disabled`: a part switched off)."""


class Unavailable(KairosError):
    """The server could not be reached (connection refused, timed out), after retries."""


_BY_STATUS: dict[int, type[KairosError]] = {400: InvalidRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound,
                                            409: Conflict, 413: InvalidRequest, 415: InvalidRequest,
                                            422: InvalidRequest, 429: RateLimited}


def error_from(response: httpx.Response) -> KairosError:
    """The typed error of a response that is not a success."""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    message = error.get("message") or f"HTTP {response.status_code}: {response.text[:200]}"
    kind = _BY_STATUS.get(response.status_code, ServerError if response.status_code >= 500 else KairosError)
    fields: dict[str, Any] = {"status": response.status_code, "code": error.get("code"),
                              "details": error.get("details"), "request_id": response.headers.get("x-request-id")}
    if kind is RateLimited:
        return RateLimited(message, retry_after=retry_after(response), **fields)
    return kind(message, **fields)


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
