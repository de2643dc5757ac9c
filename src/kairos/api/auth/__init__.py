"""API keys with scopes: who may call what (docs/security.md)."""

from kairos.api.auth.keys import ApiKey, KeyRing, Scope, parse_keys
from kairos.api.auth.middleware import AuthMiddleware
from kairos.api.auth.scopes import required_scope
from kairos.api.auth.store import KeyFile

__all__ = ["ApiKey", "AuthMiddleware", "KeyFile", "KeyRing", "Scope", "parse_keys", "required_scope"]
