"""How a console page is served: the Jinja2 environment, the static files with their
cache-busting versions, and `page`, the wrapper every console handler goes through
(who is asking, what they may do, CSRF and Origin on changes, HTML errors, headers).

A request made by htmx (`HX-Request: true`) gets only the fragment it targets; any other
request gets the whole page, so every view works without JavaScript.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jinja2
from aiohttp import web

from webhookd.api.context import ANY_TENANT, API_KEY, STATE, State
from webhookd.api.errors import api_error
from webhookd.console import security
from webhookd.console.security import Principal
from webhookd.timefmt import now_ms, to_rfc3339

log = logging.getLogger("webhookd.console")

ConsoleHandler = Callable[[web.Request, "Ctx"], Awaitable[web.StreamResponse]]

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("webhookd.console", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters["time"] = lambda ms: to_rfc3339(ms) if ms is not None else "—"


def _load_static() -> dict[str, tuple[bytes, str, str]]:
    """name -> (bytes, content type, version): served from memory, versioned by hash."""
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    out: dict[str, tuple[bytes, str, str]] = {}
    for item in resources.files("webhookd.console").joinpath("static").iterdir():
        suffix = item.name[item.name.rfind(".") :]
        if suffix in types:
            data = item.read_bytes()
            out[item.name] = (data, types[suffix], hashlib.sha256(data).hexdigest()[:12])
    return out


STATIC = _load_static()


def static_url(name: str) -> str:
    return f"/console/static/{name}?v={STATIC[name][2]}"


_ENV.globals["static"] = static_url


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    entry = STATIC.get(name)
    if entry is None:
        raise web.HTTPNotFound()
    data, content_type, version = entry
    response = web.Response(body=data, content_type=content_type)
    # A versioned URL never changes content: cache it for a year.
    if request.query.get("v") == version:
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    else:
        response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@dataclass
class Ctx:
    """What a console handler works with."""

    request: web.Request
    state: State
    who: Principal
    key: bytes
    # The store's change marker before this page read anything: its live stream starts
    # from it, so a change made while the page loaded is not missed.
    marker: str = ""

    @property
    def base(self) -> str:
        return self.who.base

    @property
    def htmx(self) -> bool:
        return self.request.headers.get("HX-Request") == "true"

    def render(self, template: str, status: int = 200, **values: Any) -> web.Response:
        body = _ENV.get_template(template).render(
            base=self.base,
            who=self.who,
            csrf=self.who.csrf(self.key),
            htmx=self.htmx,
            scoped=self.who.tenant is not ANY_TENANT,
            marker=self.marker,
            now=now_ms(),
            **values,
        )
        return web.Response(text=body, status=status, content_type="text/html")

    def redirect(self, path: str) -> web.Response:
        """After a change: 303 to the page that shows it; for htmx, a real navigation
        (HX-Redirect), so the address bar and history show that page too."""
        if self.htmx:
            return web.Response(status=200, headers={"HX-Redirect": self.base + path})
        return web.Response(status=303, headers={"Location": self.base + path})


def render_plain(template: str, status: int = 200, **values: Any) -> web.Response:
    """A page outside any session (login, the portal's 401)."""
    body = _ENV.get_template(template).render(**values)
    return web.Response(text=body, status=status, content_type="text/html")


async def console_key(state: State) -> bytes:
    key: bytes | None = state.extra.get("console_key")
    if key is None:
        key = await state.store.console_key()
        state.extra["console_key"] = key
    return key


async def principal(request: web.Request, key: bytes, portal: bool) -> Principal | None:
    st = request.app[STATE]
    now = now_ms()
    if not portal:
        if not st.config.api_keys:
            return Principal(
                "operator", "local", ANY_TENANT, frozenset(security.CAPABILITIES), "local"
            )
        token = request.cookies.get(security.CONSOLE_COOKIE)
        return security.operator_from_cookie(key, st.config, token, now)
    claims = security.verify(key, "portal", request.cookies.get(security.PORTAL_COOKIE, ""), now)
    who = security.portal_principal(claims) if claims else None
    if who is None or claims is None:
        return None
    revoked = await st.store.portal_revoked_at(who.tenant)
    if revoked is not None and int(claims.get("iat", 0)) <= revoked:
        return None
    return who


def page(
    fn: ConsoleHandler, *, portal: bool, needs: str | None = None
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Wrap a console handler: resolve who asks (else the login page or a 401), check
    the capability it needs (else 403), Origin and CSRF on every POST (else 403), let
    the API's own checks see the tenant scope, turn errors into HTML pages."""

    async def handle(request: web.Request) -> web.StreamResponse:
        st = request.app[STATE]
        if not st.config.console.enabled:
            raise web.HTTPNotFound()
        key = await console_key(st)
        who = await principal(request, key, portal)
        if who is None:
            response = _unauthenticated(request, portal)
        else:
            response = await _run(fn, request, Ctx(request, st, who, key), needs)
        if not response.prepared:  # a stream (live updates) sent its own
            frames = st.config.console.frame_ancestors if portal else ()
            security.security_headers(response, frames)
        return response

    return handle


def _unauthenticated(request: web.Request, portal: bool) -> web.StreamResponse:
    if portal:
        return render_plain("unauthorized.html", 401)
    if request.method == "GET" and request.headers.get("HX-Request") != "true":
        return web.Response(status=303, headers={"Location": "/console/login"})
    return render_plain("unauthorized.html", 401)


async def _run(
    fn: ConsoleHandler, request: web.Request, ctx: Ctx, needs: str | None
) -> web.StreamResponse:
    if needs is not None and not ctx.who.can(needs):
        return ctx.render("error.html", 403, message=f"this session may not {needs}")
    if request.method == "POST":
        form = await request.post()
        token = request.headers.get("X-CSRF-Token") or str(form.get("csrf", ""))
        if not security.same_origin(request) or not hmac.compare_digest(
            token, ctx.who.csrf(ctx.key)
        ):
            return ctx.render("error.html", 403, message="the form is stale; reload the page")
    api_key = ctx.who.api_key()
    if api_key is not None:
        request[API_KEY] = api_key
    if request.method == "GET":
        ctx.marker = "-".join(map(str, await ctx.state.store.change_marker()))
    try:
        return await fn(request, ctx)
    except web.HTTPException:
        raise
    except Exception as exc:
        err = api_error(exc)
        if err is None:
            log.exception("console error", extra={"event": "console_error", "path": request.path})
            return ctx.render("error.html", 500, message="internal error; see the server log")
        status = 404 if err.status == 403 and ctx.who.kind == "portal" else err.status
        return ctx.render("error.html", status, message=err.message, detail=err.detail or [])
