"""The operator console (/console/) and the tenant portal (/portal/): HTML pages served
by the API's own aiohttp application, rendered on the server with Jinja2, enhanced by
a vendored htmx (webhookd/console/static/VENDORED.md) and live over Server-Sent Events.

The same handlers serve both: a console session acts as an API key (its tenant scope
included), a portal session as one tenant with the capabilities of its link. Modules:
security (tokens, principals, CSRF, headers), pages (templates, static files, the
wrapper every handler goes through), auth (login, portal links), endpoints, deliveries,
charts, live, forms.
"""

from __future__ import annotations

from aiohttp import web

from webhookd.console import auth, deliveries, endpoints, erasure, event_types, live
from webhookd.console.pages import ConsoleHandler, Ctx, page, static
from webhookd.console.routing import filter_preview

PREFIXES = ("/console", "/portal")

# (method, path under the prefix, handler, capability needed)
_PAGES: list[tuple[str, str, ConsoleHandler, str | None]] = [
    ("GET", "/endpoints", endpoints.board, None),
    ("GET", "/endpoints/new", endpoints.new_form, "manage_endpoints"),
    ("POST", "/endpoints", endpoints.create, "manage_endpoints"),
    ("GET", "/events-preview", endpoints.events_preview, None),
    ("POST", "/filter-preview", filter_preview, "manage_endpoints"),
    ("GET", "/endpoints/{endpoint_id}", endpoints.detail, None),
    ("GET", "/endpoints/{endpoint_id}/edit", endpoints.edit_form, "manage_endpoints"),
    ("POST", "/endpoints/{endpoint_id}/edit", endpoints.edit, "manage_endpoints"),
    ("POST", "/endpoints/{endpoint_id}/active", endpoints.set_active, "manage_endpoints"),
    ("POST", "/endpoints/{endpoint_id}/paused", endpoints.set_paused, "manage_endpoints"),
    ("POST", "/endpoints/{endpoint_id}/delete", endpoints.delete, "manage_endpoints"),
    ("POST", "/endpoints/{endpoint_id}/secret", endpoints.reveal_secret, "read_secrets"),
    ("POST", "/endpoints/{endpoint_id}/rotate", endpoints.rotate_secret, "read_secrets"),
    ("POST", "/endpoints/{endpoint_id}/test", endpoints.send_test, "send_test"),
    ("GET", "/endpoints/{endpoint_id}/recover", endpoints.recover_preview, "retry"),
    ("POST", "/endpoints/{endpoint_id}/recover", endpoints.recover, "retry"),
    ("GET", "/deliveries", deliveries.log_page, None),
    ("GET", "/search", deliveries.search, None),
    ("GET", "/deliveries/retry-all", deliveries.retry_all_preview, "retry"),
    ("POST", "/deliveries/retry-all", deliveries.retry_all, "retry"),
    ("GET", "/deliveries/{delivery_id}", deliveries.delivery_page, None),
    ("POST", "/deliveries/{delivery_id}/retry", deliveries.retry, "retry"),
    ("GET", "/events/{event_id}", deliveries.event_page, None),
    # Operators only (the handlers check): no portal capability covers erasure.
    ("GET", "/events/{event_id}/erase-payload", erasure.confirm, None),
    ("POST", "/events/{event_id}/erase-payload", erasure.erase, None),
    ("GET", "/charts", endpoints.overview, None),
    ("GET", "/event-types", event_types.catalog, None),
    ("GET", "/live", live.stream, None),
]


async def _home(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    return ctx.redirect("/endpoints")


def routes() -> list[web.RouteDef]:
    out = [
        web.get("/console/static/{name}", static, allow_head=False),
        web.get("/console/login", auth.login_form, allow_head=False),
        web.post("/console/login", auth.login),
        web.post("/console/logout", page(auth.logout, portal=False)),
        web.get("/portal/t/{token}", auth.open_link, allow_head=False),
    ]
    for prefix in PREFIXES:
        portal = prefix == "/portal"
        out.append(web.get(prefix, page(_home, portal=portal), allow_head=False))
        out.append(web.get(prefix + "/", page(_home, portal=portal), allow_head=False))
        for method, path, fn, needs in _PAGES:
            handler = page(fn, portal=portal, needs=needs)
            out.append(web.route(method, prefix + path, handler))
    return out


def install(app: web.Application) -> None:
    """Add the console's routes and its live feed to the API's application."""
    from webhookd.api.context import STATE

    app[live.FEED] = live.LiveFeed(app[STATE])
    app.on_shutdown.append(live.on_shutdown)
    app.add_routes(routes())
