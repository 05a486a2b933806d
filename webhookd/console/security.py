"""Who is using the console, and what protects them: signed tokens (sessions and portal
links), the principal a request acts as, CSRF tokens, the Origin check and the security
headers every console answer carries.

Tokens are `<base64url JSON>.<base64url HMAC-SHA256>`, signed with the store's console
key (Store.console_key: one per database, so every daemon of a PostgreSQL database
accepts the others' sessions and links), the kind of token ("session", "portal", "link")
bound into the MAC so that one kind can never be presented as another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from webhookd.api.context import ANY_TENANT, STATE
from webhookd.config import ApiKey, Config

CAPABILITIES = ("manage_endpoints", "read_secrets", "retry", "send_test")
DEFAULT_PORTAL_CAPABILITIES = ("manage_endpoints", "retry", "send_test")
CONSOLE_COOKIE = "webhookd_console"
PORTAL_COOKIE = "webhookd_portal"
KEY: web.AppKey[bytes] = web.AppKey("webhookd_console_key", bytes)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(key: bytes, kind: str, claims: dict[str, Any]) -> str:
    body = _b64(orjson.dumps(claims))
    mac = hmac.new(key, f"{kind}.{body}".encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def verify(key: bytes, kind: str, token: str, now_ms: int) -> dict[str, Any] | None:
    """The claims of a token of this kind that is intact and not expired, else None."""
    body, _, mac = token.partition(".")
    if not body or not mac or len(token) > 4096:
        return None
    try:
        expected = hmac.new(key, f"{kind}.{body}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _unb64(mac)):
            return None
        claims = orjson.loads(_unb64(body))
    except (ValueError, orjson.JSONDecodeError):
        return None
    if not isinstance(claims, dict) or not isinstance(claims.get("exp"), int):
        return None
    return claims if claims["exp"] > now_ms else None


def key_fingerprint(key: bytes, api_key: ApiKey) -> str:
    """Binds a session to the key's value, not only its name: replacing a key (and
    reloading) ends the sessions it opened. Never the key itself."""
    return hmac.new(key, api_key.key.encode(), hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True)
class Principal:
    """Who a console request acts as: an operator (an API key, or nobody when no keys
    are configured) or a tenant's portal user."""

    kind: str  # "operator" | "portal"
    name: str  # the API key's name, "local" without keys, "portal:<tenant>"
    tenant: Any  # ANY_TENANT, or the one tenant it may see
    capabilities: frozenset[str]
    session: str  # a random id per session (the CSRF token derives from it)
    expires_at: int | None = None

    @property
    def base(self) -> str:
        return "/portal" if self.kind == "portal" else "/console"

    def can(self, capability: str) -> bool:
        return capability in self.capabilities

    def api_key(self) -> ApiKey | None:
        """The API key the API's own checks see (tenant scope), None for unscoped."""
        if self.tenant is ANY_TENANT:
            return None
        return ApiKey(name=self.name, key="", tenant=self.tenant)

    def csrf(self, key: bytes) -> str:
        return hmac.new(key, f"csrf.{self.session}".encode(), hashlib.sha256).hexdigest()


def new_session_id() -> str:
    return secrets.token_urlsafe(16)


def operator_from_cookie(
    key: bytes, config: Config, token: str | None, now_ms: int
) -> Principal | None:
    """The operator a console session cookie stands for, if it is valid and its key is
    still configured with the same value."""
    if not token:
        return None
    claims = verify(key, "session", token, now_ms)
    if claims is None:
        return None
    for api_key in config.api_keys:
        if api_key.name == claims.get("k") and hmac.compare_digest(
            key_fingerprint(key, api_key), str(claims.get("f"))
        ):
            return Principal(
                kind="operator",
                name=api_key.name,
                tenant=ANY_TENANT if api_key.tenant is None else api_key.tenant,
                capabilities=frozenset(CAPABILITIES),
                session=str(claims.get("s")),
                expires_at=claims["exp"],
            )
    return None


def operator_session(key: bytes, api_key: ApiKey, now_ms: int, ttl_s: float) -> str:
    return sign(
        key,
        "session",
        {
            "k": api_key.name,
            "f": key_fingerprint(key, api_key),
            "s": new_session_id(),
            "iat": now_ms,
            "exp": now_ms + int(ttl_s * 1000),
        },
    )


def portal_principal(claims: dict[str, Any]) -> Principal | None:
    tenant = claims.get("tn")
    caps = claims.get("caps")
    if not isinstance(tenant, str) or not isinstance(caps, list):
        return None
    return Principal(
        kind="portal",
        name=f"portal:{tenant}",
        tenant=tenant,
        capabilities=frozenset(c for c in caps if c in CAPABILITIES),
        session=str(claims.get("s")),
        expires_at=claims["exp"],
    )


def same_origin(request: web.Request) -> bool:
    """Whether a state-changing request comes from a page of this very origin. Browsers
    send Origin on every POST; a request without one (or with "null") is refused."""
    origin = request.headers.get("Origin")
    if not origin or origin == "null":
        return False
    return origin == f"{request.scheme}://{request.host}"


def is_tls(request: web.Request) -> bool:
    return request.scheme == "https"


def cookie_args(request: web.Request, *, portal: bool, max_age_s: float) -> dict[str, Any]:
    """HttpOnly always; the console's SameSite=Strict; the portal's Lax (a link opened
    from the application's page must carry it), or None when it may be framed over TLS
    (a third-party frame sends no other kind); Secure when served over TLS."""
    same_site = "Strict"
    if portal:
        same_site = "Lax"
        config = request.app[STATE].config
        if config.console.frame_ancestors and is_tls(request):
            same_site = "None"
    return {
        "httponly": True,
        "samesite": same_site,
        "secure": is_tls(request),
        "path": "/portal" if portal else "/console",
        "max_age": int(max_age_s),
    }


def security_headers(response: web.StreamResponse, frame_ancestors: tuple[str, ...]) -> None:
    """A strict CSP: scripts and styles from this origin only (htmx runs with eval and
    script tags off), no plugins, no base or form targets elsewhere; framing only by the
    configured origins (portal) or none (console)."""
    ancestors = " ".join(frame_ancestors) if frame_ancestors else "'none'"
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; "
        f"frame-ancestors {ancestors}"
    )
    if not frame_ancestors:
        response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers.setdefault("Cache-Control", "no-store")
