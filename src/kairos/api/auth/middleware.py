"""Checks every request's API key against the scope its route needs (auth/scopes.py).

With no key configured (neither KAIROS_API_KEYS nor a key file) every route is open,
as on a developer's machine; `kairos serve` warns when that is so on a non-loopback
address. The key arrives as `Authorization: Bearer <key>` or `X-API-Key: <key>`
(live streams also `?api_key=`, the dashboard's pages its sign-in cookie); the matched
key's id, never the key, is put in the request scope for rate limits and logs."""

from __future__ import annotations

from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from kairos.api.asgi import send_error, send_redirect
from kairos.api.auth.keys import ApiKey, KeyRing
from kairos.api.auth.keys import Scope as KeyScope
from kairos.api.auth.scopes import accepts_query_key, is_dashboard, required_scope
from kairos.api.auth.store import KeyFile
from kairos.dashboard import COOKIE

KEY_ID = "kairos.key_id"  # scope entry: the id of the key that authenticated the request


class Authenticator:
    def __init__(self, configured: list[ApiKey], key_file: KeyFile | None) -> None:
        self.configured = configured
        self.key_file = key_file

    def ring(self) -> KeyRing:
        stored = self.key_file.keys() if self.key_file else []
        return KeyRing([*self.configured, *stored],
                       enforced=bool(self.configured) or (self.key_file is not None and self.key_file.exists))

    def admits(self, key: str, scope: str) -> bool:
        """Whether `key` holds `scope` (anything goes while no key is configured)."""
        ring = self.ring()
        if not ring.enforced:
            return True
        matched = ring.match(key)
        return matched is not None and matched.allows(KeyScope(scope))


def presented_key(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            kind, _, token = value.decode("latin-1").partition(" ")
            if kind.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    if is_dashboard(scope["path"]):
        for name, value in scope["headers"]:
            if name == b"cookie":
                found = SimpleCookie(value.decode("latin-1")).get(COOKIE)
                if found is not None and found.value:
                    return found.value
    if accepts_query_key(scope["path"]) and scope.get("query_string"):
        found = parse_qs(scope["query_string"].decode("latin-1")).get("api_key")
        if found:
            return found[0]
    return None


class AuthMiddleware:
    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        needed = required_scope(scope["method"], scope["path"])
        ring = self.authenticator.ring()
        if needed is None or not ring.enforced:
            await self.app(scope, receive, send)
            return
        key = presented_key(scope)
        if is_dashboard(scope["path"]) and scope["method"] == "GET" and (
                key is None or (found := ring.match(key)) is None or not found.allows(needed)):
            await send_redirect(send, "/dashboard/login")  # a browser: to the sign-in page
            return
        if key is None:
            await send_error(send, 401, "unauthorized", "an API key is required: send "
                             "'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                             headers={"WWW-Authenticate": "Bearer"})
            return
        matched = ring.match(key)
        if matched is None:
            await send_error(send, 401, "unauthorized", "the API key is not valid",
                             headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
            return
        if not matched.allows(needed):
            await send_error(send, 403, "forbidden", f"this key lacks the '{needed.value}' scope",
                             {"required": needed.value, "scopes": sorted(s.value for s in matched.scopes),
                              "key_id": matched.key_id})
            return
        scope[KEY_ID] = matched.key_id
        await self.app(scope, receive, send)
