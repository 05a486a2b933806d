"""`webhookd.Client`: the same client as `webhookd.AsyncClient`, for code without an event
loop.

Each Client runs one AsyncClient on a private event loop in a thread of its own, so
calls work from any thread (and from inside another event loop's thread, blocking it) and
keep one connection pool. `close()` (or `with`) stops the thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from webhookd.client.core import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_RETRY_WAIT_S,
    DEFAULT_TIMEOUT_S,
    AsyncClient,
    Sleep,
)
from webhookd.client.models import (
    Delivery,
    DeliveryDetail,
    DeliveryStatus,
    Endpoint,
    Event,
    EventDetail,
    EventIn,
    EventType,
    Page,
    PublishResult,
    Secret,
    Stats,
    TestResult,
)

T = TypeVar("T")


def _async_sleep(sleep: Callable[[float], None]) -> Sleep:
    async def wait(seconds: float) -> None:
        sleep(seconds)

    return wait


class Client:
    """The management API from ordinary (blocking) code.

    ```python
    with webhookd.Client("http://127.0.0.1:8080") as client:
        event = client.publish("order.created", {"order_id": "o_1"}, id="order-o_1")
    ```

    The arguments and methods are those of `webhookd.AsyncClient`, without `await`;
    `sleep` is a blocking function here (default: waiting on the client's own loop).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        max_retry_wait_s: float = DEFAULT_MAX_RETRY_WAIT_S,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self._async = AsyncClient(
            url,
            api_key=api_key,
            timeout_s=timeout_s,
            max_attempts=max_attempts,
            max_retry_wait_s=max_retry_wait_s,
            sleep=_async_sleep(sleep) if sleep is not None else None,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="webhookd-client", daemon=True
        )
        self._thread.start()
        self._closed = False

    @property
    def address(self) -> str:
        return self._async.address.shown

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coro.close()
            raise RuntimeError("this webhookd.Client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Call `path` with a JSON body; the answer's JSON, or None."""
        return self._run(
            self._async.request(method, path, params=params, body=body, headers=headers)
        )

    # --- events -----------------------------------------------------------------------

    def publish(
        self,
        type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        id: str | None = None,
        tenant: str | None = None,
        deliver_at: str | None = None,
        channels: Sequence[str] | None = None,
    ) -> PublishResult:
        """Publish one event; with `id`, publishing it again creates nothing."""
        return self._run(
            self._async.publish(
                type, payload, id=id, tenant=tenant, deliver_at=deliver_at, channels=channels
            )
        )

    def publish_batch(self, events: Sequence[EventIn]) -> list[PublishResult]:
        """Publish up to 1000 events in one transaction: all or none."""
        return self._run(self._async.publish_batch(events))

    def get_event(self, event_id: str, *, tenant: str | None = None) -> EventDetail:
        return self._run(self._async.get_event(event_id, tenant=tenant))

    def erase_payload(self, event_id: str, *, tenant: str | None = None) -> None:
        """Erase the event's stored payload now (its unfinished deliveries are cancelled)."""
        self._run(self._async.erase_payload(event_id, tenant=tenant))

    def list_events(
        self,
        *,
        type: str | None = None,
        tenant: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Event]:
        return self._run(
            self._async.list_events(
                type=type, tenant=tenant, since=since, until=until, limit=limit, cursor=cursor
            )
        )

    # --- endpoints --------------------------------------------------------------------

    def create_endpoint(
        self,
        url: str,
        *,
        events: Sequence[str] | None = None,
        tenant: str | None = None,
        description: str | None = None,
        secret: str | None = None,
        **fields: Any,
    ) -> Endpoint:
        """Create an endpoint; the answer carries its `secret`."""
        return self._run(
            self._async.create_endpoint(
                url, events=events, tenant=tenant, description=description, secret=secret, **fields
            )
        )

    def get_endpoint(self, endpoint_id: str) -> Endpoint:
        return self._run(self._async.get_endpoint(endpoint_id))

    def update_endpoint(self, endpoint_id: str, **fields: Any) -> Endpoint:
        """Change any endpoint field but `secret`."""
        return self._run(self._async.update_endpoint(endpoint_id, **fields))

    def delete_endpoint(self, endpoint_id: str) -> None:
        self._run(self._async.delete_endpoint(endpoint_id))

    def list_endpoints(
        self,
        *,
        tenant: str | None = None,
        active: bool | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Endpoint]:
        return self._run(
            self._async.list_endpoints(tenant=tenant, active=active, limit=limit, cursor=cursor)
        )

    def endpoint_secret(self, endpoint_id: str) -> Secret:
        return self._run(self._async.endpoint_secret(endpoint_id))

    def rotate_secret(
        self,
        endpoint_id: str,
        *,
        secret: str | None = None,
        grace_s: float | None = None,
        algorithm: str | None = None,
    ) -> str:
        return self._run(
            self._async.rotate_secret(
                endpoint_id, secret=secret, grace_s=grace_s, algorithm=algorithm
            )
        )

    def test_endpoint(
        self,
        endpoint_id: str,
        *,
        event_type: str | None = None,
        payload: Mapping[str, Any] | None = None,
    ) -> TestResult:
        return self._run(
            self._async.test_endpoint(endpoint_id, event_type=event_type, payload=payload)
        )

    def recover_endpoint(self, endpoint_id: str, *, since: str, until: str | None = None) -> int:
        return self._run(self._async.recover_endpoint(endpoint_id, since=since, until=until))

    def endpoint_stats(self, endpoint_id: str) -> Stats:
        return self._run(self._async.endpoint_stats(endpoint_id))

    # --- deliveries -------------------------------------------------------------------

    def list_deliveries(
        self,
        *,
        endpoint_id: str | None = None,
        event_id: str | None = None,
        event_type: str | None = None,
        status: DeliveryStatus | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Delivery]:
        return self._run(
            self._async.list_deliveries(
                endpoint_id=endpoint_id,
                event_id=event_id,
                event_type=event_type,
                status=status,
                since=since,
                until=until,
                limit=limit,
                cursor=cursor,
            )
        )

    def get_delivery(self, delivery_id: str) -> DeliveryDetail:
        return self._run(self._async.get_delivery(delivery_id))

    def retry_delivery(self, delivery_id: str) -> Delivery:
        return self._run(self._async.retry_delivery(delivery_id))

    # --- event types ------------------------------------------------------------------

    def list_event_types(self) -> list[EventType]:
        return self._run(self._async.list_event_types())

    def create_event_type(
        self,
        name: str,
        description: str = "",
        *,
        schema: Mapping[str, Any] | None = None,
        example: Mapping[str, Any] | None = None,
    ) -> EventType:
        return self._run(
            self._async.create_event_type(name, description, schema=schema, example=example)
        )

    def get_event_type(self, name: str) -> EventType:
        return self._run(self._async.get_event_type(name))

    def update_event_type(self, name: str, **changes: Any) -> EventType:
        return self._run(self._async.update_event_type(name, **changes))

    def event_type_schema(self, name: str) -> dict[str, Any]:
        return self._run(self._async.event_type_schema(name))

    def delete_event_type(self, name: str) -> None:
        self._run(self._async.delete_event_type(name))
