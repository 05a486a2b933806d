"""webhookd: a self-hosted webhook sender in one process with one SQLite file.

The package also carries the client of its management API: `from webhookd import Client`
(blocking) or `AsyncClient` (asyncio), with `WebhookdError` for every failure. They are
loaded on first use, so that the daemon and the command line do not pay for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["AsyncClient", "Client", "WebhookdError", "__version__"]

if TYPE_CHECKING:
    from webhookd.client.core import AsyncClient, WebhookdError
    from webhookd.client.sync import Client


def __getattr__(name: str) -> Any:
    if name in ("AsyncClient", "WebhookdError"):
        from webhookd.client import core

        return getattr(core, name)
    if name == "Client":
        from webhookd.client.sync import Client

        return Client
    raise AttributeError(f"module 'webhookd' has no attribute {name!r}")
