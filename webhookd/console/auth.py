"""Logging in to the console with an API key, logging out, and opening a portal link.

A login posts the key in a form; the answer sets the session cookie (HttpOnly,
SameSite=Strict, Secure over TLS) bound to that key's name, value and tenant scope.
Logins, failed logins and portal sessions are logged, never with the key or token.
"""

from __future__ import annotations

import logging

from aiohttp import web

from webhookd.api.context import STATE
from webhookd.api.errors import ApiError
from webhookd.console import security
from webhookd.console.pages import Ctx, console_key, render_plain
from webhookd.timefmt import now_ms

log = logging.getLogger("webhookd.console")


def _remote(request: web.Request) -> str:
    return request.remote or "unix"


async def login_form(request: web.Request) -> web.StreamResponse:
    config = request.app[STATE].config
    if not config.console.enabled:
        raise web.HTTPNotFound()
    if not config.api_keys:
        raise web.HTTPSeeOther("/console/endpoints")
    response = render_plain("login.html", error=None)
    security.security_headers(response, ())
    return response


async def login(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    if not st.config.console.enabled:
        raise web.HTTPNotFound()
    if not security.same_origin(request):
        response = render_plain("login.html", 403, error="Sign in from this page.")
        security.security_headers(response, ())
        return response
    from webhookd.api import find_key  # the API's own key check (imported late: a cycle)

    form = await request.post()
    presented = str(form.get("api_key", "")).strip()
    try:
        api_key = find_key(st.config, f"Bearer {presented}")
    except ApiError:
        log.warning(
            "console login refused",
            extra={"event": "console_login_failed", "remote": _remote(request)},
        )
        response = render_plain("login.html", 401, error="That API key is not valid.")
        security.security_headers(response, ())
        return response
    key = await console_key(st)
    ttl_s = st.config.console.session_ttl_s
    token = security.operator_session(key, api_key, now_ms(), ttl_s)
    log.info(
        "console login",
        extra={
            "event": "console_login",
            "key": api_key.name,
            "tenant": api_key.tenant,
            "remote": _remote(request),
        },
    )
    response = web.Response(status=303, headers={"Location": "/console/endpoints"})
    response.set_cookie(
        security.CONSOLE_COOKIE,
        token,
        **security.cookie_args(request, portal=False, max_age_s=ttl_s),
    )
    security.security_headers(response, ())
    return response


async def logout(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    """POST /console/logout (through `page`: Origin and CSRF checked like any change)."""
    response = web.Response(status=303, headers={"Location": "/console/login"})
    if ctx.htmx:
        response = web.Response(status=200, headers={"HX-Redirect": "/console/login"})
    response.del_cookie(security.CONSOLE_COOKIE, path="/console")
    return response


async def open_link(request: web.Request) -> web.StreamResponse:
    """GET /portal/t/{token}: a valid link starts a session of its tenant, then the
    address bar moves to /portal/ (the token is no longer in it, nor in Referer)."""
    st = request.app[STATE]
    if not st.config.console.enabled:
        raise web.HTTPNotFound()
    key = await console_key(st)
    now = now_ms()
    claims = security.verify(key, "link", request.match_info["token"], now)
    tenant = claims.get("tn") if claims else None
    revoked = await st.store.portal_revoked_at(tenant) if isinstance(tenant, str) else None
    frames = st.config.console.frame_ancestors
    if (
        claims is None
        or not isinstance(tenant, str)
        or int(claims.get("iat", 0)) <= (revoked or -1)
    ):
        response = render_plain("unauthorized.html", 401)
        security.security_headers(response, frames)
        return response
    ttl_s = st.config.console.session_ttl_s
    session = {
        "tn": tenant,
        "caps": claims.get("caps", []),
        "s": security.new_session_id(),
        "iat": now,
        "exp": now + int(ttl_s * 1000),
    }
    log.info(
        "portal session started",
        extra={"event": "portal_session", "tenant": tenant, "remote": _remote(request)},
    )
    response = web.Response(status=303, headers={"Location": "/portal/endpoints"})
    response.set_cookie(
        security.PORTAL_COOKIE,
        security.sign(key, "portal", session),
        **security.cookie_args(request, portal=True, max_age_s=ttl_s),
    )
    security.security_headers(response, frames)
    return response
