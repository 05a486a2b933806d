"""What the request handlers share: the config in force, the store, the dispatcher."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from webhookd.config import ApiKey, Config
from webhookd.store.interface import Store

if TYPE_CHECKING:
    from webhookd.dispatcher import Dispatcher


@dataclass
class State:
    config: Config
    store: Store
    dispatcher: Dispatcher | None = None
    starting: bool = True
    stopping: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


STATE: web.AppKey[State] = web.AppKey("webhookd_state", State)
# Where a request keeps the API key it presented: a typed key where aiohttp has them
# (a plain string key makes newer aiohttp warn on every process's first request).
API_KEY: Any = (
    web.RequestKey("webhookd_api_key", ApiKey) if hasattr(web, "RequestKey") else "api_key"
)
ANY_TENANT: Any = ...


def state(request: web.Request) -> State:
    return request.app[STATE]


def api_key(request: web.Request) -> ApiKey | None:
    key: ApiKey | None = request.get(API_KEY)
    return key


def scope(request: web.Request) -> Any:
    """The tenant the caller is limited to, or ANY_TENANT for an unscoped caller."""
    key = api_key(request)
    if key is None or key.tenant is None:
        return ANY_TENANT
    return key.tenant


def tenant_filter(request: web.Request, params: dict[str, str]) -> Any:
    """The `tenant` a list is filtered by: the query's, narrowed to the key's own tenant
    for a scoped key (asking for another tenant is a 403)."""
    from webhookd.api.errors import ApiError

    tenant: Any = params.get("tenant", ANY_TENANT)
    limited = scope(request)
    if limited is ANY_TENANT:
        return tenant
    if tenant is not ANY_TENANT and tenant != limited:
        raise ApiError(403, f"this API key may only use tenant {limited!r}")
    return limited


def visible_to(request: web.Request, tenant: str | None) -> bool:
    """Whether the caller may see an object of this tenant (others answer 404)."""
    limited = scope(request)
    return limited is ANY_TENANT or tenant == limited
