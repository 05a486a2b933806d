"""Tenant portal links: `POST /v1/portal-links` makes one, `POST /v1/portal-links/revoke`
ends every link and session of a tenant at once.

A link is a token signed with the store's console key (webhookd/console/security.py)
that names one tenant, its capabilities and when it expires; opening it starts a portal
session for that tenant alone (webhookd/console/auth.py). Nothing is stored per link:
revocation stores the time before which the tenant's links and sessions are void.
"""

from __future__ import annotations

import logging
import secrets

from aiohttp import web

from webhookd.api.context import ANY_TENANT, scope, state
from webhookd.api.errors import ApiError, json_response
from webhookd.api.validate import Problems, number, read_json, require_object, unknown_fields
from webhookd.config import TENANT_RE
from webhookd.console import pages, security
from webhookd.timefmt import now_ms, to_rfc3339

log = logging.getLogger("webhookd.api")
BODY_LIMIT = 65536
MIN_TTL_S = 60
MAX_TTL_S = 604800
DEFAULT_TTL_S = 3600


def _tenant(body: dict[str, object], request: web.Request, problems: Problems) -> str | None:
    tenant = body.get("tenant")
    if not isinstance(tenant, str) or not TENANT_RE.fullmatch(tenant):
        problems.add(("body", "tenant"), "expected a tenant name: 1-128 of [A-Za-z0-9_.:@-]")
        return None
    limited = scope(request)
    if limited is not ANY_TENANT and tenant != limited:
        raise ApiError(403, f"this API key may only use tenant {limited!r}")
    return tenant


def _capabilities(value: object, problems: Problems) -> list[str]:
    if value is None:
        return list(security.DEFAULT_PORTAL_CAPABILITIES)
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        problems.add(("body", "capabilities"), "expected a list of capability names")
        return []
    unknown = [c for c in value if c not in security.CAPABILITIES]
    if unknown:
        problems.add(
            ("body", "capabilities"),
            f"unknown capability {unknown[0]!r}; expected any of "
            f"{', '.join(security.CAPABILITIES)}",
        )
    return sorted(set(value))


def _enabled(request: web.Request) -> None:
    if not state(request).config.console.enabled:
        raise ApiError(409, "the console is turned off (console.enabled: false)")


async def create(request: web.Request) -> web.Response:
    _enabled(request)
    body = require_object(await read_json(request, BODY_LIMIT))
    problems = Problems()
    unknown_fields(body, ("tenant", "ttl_s", "capabilities"), problems)
    tenant = _tenant(body, request, problems)
    ttl_s = DEFAULT_TTL_S
    if "ttl_s" in body:
        ttl = number(
            body["ttl_s"], ("body", "ttl_s"), problems, lo=MIN_TTL_S, hi=MAX_TTL_S, integer=True
        )
        ttl_s = int(ttl) if ttl is not None else DEFAULT_TTL_S
    caps = _capabilities(body.get("capabilities"), problems)
    problems.raise_if_any()
    assert tenant is not None
    now = now_ms()
    expires_at = now + ttl_s * 1000
    key = await pages.console_key(state(request))
    claims = {"tn": tenant, "caps": caps, "iat": now, "exp": expires_at}
    claims["n"] = secrets.token_urlsafe(8)
    token = security.sign(key, "link", claims)
    log.info(
        "portal link made",
        extra={"event": "portal_link", "tenant": tenant, "ttl_s": ttl_s, "capabilities": caps},
    )
    return json_response(
        {
            "url": f"{request.scheme}://{request.host}/portal/t/{token}",
            "expires_at": to_rfc3339(expires_at),
            "tenant": tenant,
            "capabilities": caps,
        },
        201,
    )


async def revoke(request: web.Request) -> web.Response:
    _enabled(request)
    body = require_object(await read_json(request, BODY_LIMIT))
    problems = Problems()
    unknown_fields(body, ("tenant",), problems)
    tenant = _tenant(body, request, problems)
    problems.raise_if_any()
    assert tenant is not None
    await state(request).store.revoke_portal(tenant, now_ms())
    log.info("portal links revoked", extra={"event": "portal_revoked", "tenant": tenant})
    return json_response({"tenant": tenant, "revoked": True})


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/portal-links", create),
        web.post("/v1/portal-links/revoke", revoke),
    ]
