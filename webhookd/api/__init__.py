"""The management API: an aiohttp application with one module per resource.

Every request goes through aiohttp's server and this app's middlewares: the connection
bookkeeping (webhookd.api.connections), then authentication and the error format."""

from __future__ import annotations

import hmac

from aiohttp import web

from webhookd import metrics
from webhookd.api import (
    connections,
    deliveries,
    endpoints,
    erasure,
    event_types,
    events,
    openapi,
    ops,
    portal_links,
)
from webhookd.api.context import API_KEY, STATE, State
from webhookd.api.errors import ApiError, Handler, error_for
from webhookd.config import ApiKey, Config

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json"})
CONSOLE_PATHS = ("/console", "/portal")


def authenticate(request: web.Request) -> None:
    """Raise a 401 ApiError unless the request may go on; remember the key it used."""
    config = request.app[STATE].config
    if not config.api_keys:
        return
    path = request.path
    if path in PUBLIC_PATHS or (path == "/metrics" and not config.metrics.require_auth):
        return
    if path.startswith(CONSOLE_PATHS):
        return  # the console's pages check their own sessions (webhookd.console.pages)
    request[API_KEY] = find_key(config, request.headers.get("Authorization", ""))


def find_key(config: Config, authorization: str) -> ApiKey:
    """The configured API key an Authorization header presents; a 401 ApiError if none."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            "send an API key as Authorization: Bearer <key>",
            headers={"WWW-Authenticate": 'Bearer realm="webhookd"'},
        )
    # aiohttp decodes header bytes as UTF-8 with surrogateescape: this gives back the bytes
    # that were sent, so a header that is not UTF-8 is simply a key that does not match.
    presented = token.strip().encode("utf-8", "surrogateescape")
    match = None
    # Compare against every key, always, so timing says nothing about which one is close.
    for key in config.api_keys:
        if hmac.compare_digest(presented, key.key.encode()) and match is None:
            match = key
    if match is None:
        raise ApiError(
            401,
            "the API key is not valid",
            headers={"WWW-Authenticate": 'Bearer realm="webhookd", error="invalid_token"'},
        )
    return match


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authentication and the error format, in one layer (each middleware layer costs
    every request a little)."""
    try:
        authenticate(request)
        return await handler(request)
    except Exception as exc:
        return error_for(request, exc)


def create_app(state: State) -> web.Application:
    limits = state.config.limits
    app = web.Application(
        middlewares=[connections.middleware, middleware],
        client_max_size=max(limits.max_batch_bytes, limits.max_payload_bytes) + (1 << 20),
    )
    app[STATE] = state
    app[connections.CONNECTIONS] = connections.Connections(state)
    app.add_routes(ops.routes())
    app.add_routes(openapi.routes())
    app.add_routes([web.get("/metrics", metrics.handler, allow_head=False)])
    app.add_routes(events.routes())
    app.add_routes(erasure.routes())
    app.add_routes(event_types.routes())
    app.add_routes(endpoints.routes())
    app.add_routes(deliveries.routes())
    app.add_routes(portal_links.routes())
    from webhookd import console  # it builds on the API's modules

    console.install(app)
    return app
