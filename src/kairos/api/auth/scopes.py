"""Which scope each route needs. Deny by default: a /v1 path no rule names is admin's."""

from __future__ import annotations

import re

from kairos.api.auth.keys import Scope

OPEN_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/dashboard/login"})
OPEN_PREFIXES = ("/dashboard/static/",)  # the dashboard's script and styles: no data in them

# (methods, path pattern, scope), first match wins.
RULES: list[tuple[frozenset[str], re.Pattern[str], Scope]] = [
    (frozenset({"DELETE"}), re.compile(r"^/v1/users/[^/]+$"), Scope.admin),
    (frozenset({"POST"}), re.compile(r"^/v1/events$"), Scope.ingest),
    (frozenset({"PUT", "POST", "DELETE"}), re.compile(r"^/v1/items(/[^/]+)?$"), Scope.ingest),
    (frozenset({"PUT"}), re.compile(r"^/v1/users/[^/]+(/push)?$"), Scope.ingest),
    (frozenset({"POST"}), re.compile(r"^/v1/notifications/[^/]+/feedback$"), Scope.ingest),
    (frozenset({"GET", "HEAD"}), re.compile(r"^/v1/(recommendations|search|items)(/.*)?$"), Scope.read),
    (frozenset({"GET", "HEAD"}), re.compile(r"^/v1/users/[^/]+(/push|/notifications|/notifications/stream)?$"),
     Scope.read),
]


def required_scope(method: str, path: str) -> Scope | None:
    """None: open to anyone (health, the API's own documentation)."""
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return None
    for methods, pattern, scope in RULES:
        if method in methods and pattern.match(path):
            return scope
    return Scope.admin


def accepts_query_key(path: str) -> bool:
    """A browser's EventSource cannot send headers: live streams may carry ?api_key=."""
    return path.endswith("/stream")


def is_dashboard(path: str) -> bool:
    """The dashboard's pages: a browser's, signed in by a cookie (dashboard/routes.py)."""
    return path == "/dashboard" or path.startswith("/dashboard/")
