"""`webhookd.AsyncClient`: the typed asyncio client of the management API.

It owns where the daemon is (`http://host:port`, `https://…` or `unix:/path`, default
`WEBHOOKD_URL`, then http://127.0.0.1:8080), one aiohttp session per client, retries of
503 and 429 answers (which say nothing was stored) honouring `Retry-After`, and turning
every failure into one exception type, `WebhookdError`. `webhookd.Client` (client/sync.py)
is the same client for code without an event loop; the `webhookd` command line uses this
one.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from webhookd import __version__
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
from webhookd.retry import parse_retry_after

if TYPE_CHECKING:
    import aiohttp

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_MAX_RETRY_WAIT_S = 30.0
# Answers that mean "nothing was stored, come back later": safe to send again as is.
RETRY_STATUSES = frozenset({429, 503})
# The wait before a retry when the answer has no readable Retry-After, doubling each time.
FIRST_BACKOFF_S = 0.5
# How long the plain-http probe after a failed TLS handshake may take.
PROBE_TIMEOUT_S = 3.0

Sleep = Callable[[float], Awaitable[None]]


class WebhookdError(Exception):
    """Every failure of a client call.

    `status` is the HTTP status of an error answer, or None when no answer came; `code` the
    API's error code (`not_found`, `validation_error`, …) or, without an answer, the kind of
    failure (`connection_refused`, `unknown_host`, `tls_mismatch`, `tls`, `timeout`,
    `not_json`, `connection_error`); `message` one sentence a person can act on; `detail`
    the validation problems (`[{"loc": [...], "msg": …}]`); `body` the parsed answer.
    `hint` says what to check when no answer came. `str()` is one line, such as
    `404 not_found: no endpoint with id ep_x`.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "error",
        detail: list[dict[str, Any]] | None = None,
        retry_after_s: float | None = None,
        body: Any = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.status = status
        self.code = code
        self.detail = detail or []
        self.retry_after_s = retry_after_s
        self.body = body

    def __str__(self) -> str:
        if self.status is None:
            return f"{self.message} ({self.hint})" if self.hint else self.message
        line = f"{self.status} {self.code}: {self.message}"
        if self.detail and isinstance(self.detail[0], dict):
            loc = [str(p) for p in self.detail[0].get("loc", [])]
            if loc and ".".join(loc[1:]) not in self.message:
                line += f" (at {'.'.join(loc)})"
        if self.retry_after_s is not None:
            line += f" (retry after {self.retry_after_s:g} s)"
        return _one_line(line)


def _one_line(text: str, limit: int = 2000) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def error_from_answer(status: int, raw: bytes, retry_after: str | None) -> WebhookdError:
    """The WebhookdError of an error answer, from the API's `{"error", "message"}` body."""
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    wait_s = parse_retry_after(retry_after, time.time()) if retry_after else None
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), str):
        text = raw.decode("utf-8", errors="replace").strip()
        return WebhookdError(
            _one_line(text) or f"HTTP {status}",
            status=status,
            code="http_error",
            retry_after_s=wait_s,
            body=doc,
        )
    detail = doc.get("detail")
    return WebhookdError(
        str(doc.get("message", "")),
        status=status,
        code=doc["error"],
        detail=detail if isinstance(detail, list) else None,
        retry_after_s=wait_s,
        body=doc,
    )


@dataclass(frozen=True)
class Address:
    """Where the API is: `shown` in messages, `base` for request URLs, or a unix socket."""

    shown: str
    base: str
    unix_path: str | None = None


def parse_address(raw: str | None) -> Address:
    """`http(s)://host:port`, a bare `host:port`, or `unix:/path`; None: WEBHOOKD_URL, then
    the default. ValueError on anything else."""
    text = (raw or os.environ.get("WEBHOOKD_URL") or DEFAULT_URL).strip().rstrip("/")
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path.startswith("/"):
            raise ValueError(f"expected unix:/absolute/path, got {text!r}")
        return Address(text, "http://localhost", path)
    if "://" not in text:
        text = f"http://{text}"
    if not text.startswith(("http://", "https://")):
        raise ValueError(f"expected http(s)://host:port or unix:/path, got {text!r}")
    return Address(text, text)


def _query(params: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        if value is None:
            continue
        out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def _given(**fields: Any) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


def _unreachable(where: Address, err: OSError | None) -> WebhookdError:
    """No connection: which failure it was, in words that say what to check."""
    if isinstance(err, socket.gaierror):
        host = where.base.split("://", 1)[-1].rsplit(":", 1)[0]
        return WebhookdError(
            f"cannot reach {where.shown}: unknown host {host} ({err.strerror})",
            code="unknown_host",
            hint="check the host name",
        )
    running = "is webhookd running and listening there?"
    if isinstance(err, ConnectionRefusedError):
        return WebhookdError(
            f"cannot reach {where.shown}: connection refused",
            code="connection_refused",
            hint=running,
        )
    if isinstance(err, FileNotFoundError):
        return WebhookdError(
            f"cannot reach {where.shown}: no such socket", code="connection_refused", hint=running
        )
    reason = os.strerror(err.errno).lower() if err is not None and err.errno else str(err)
    return WebhookdError(f"cannot reach {where.shown}: {reason}", code="connection_error")


class AsyncClient:
    """The management API from asyncio code.

    ```python
    async with webhookd.AsyncClient("http://127.0.0.1:8080", api_key=None) as client:
        event = await client.publish("order.created", {"order_id": "o_1"}, id="order-o_1")
    ```

    `url` and `api_key` default to `WEBHOOKD_URL` and `WEBHOOKD_API_KEY`. A 503 or 429
    answer is sent again after its `Retry-After` (or 0.5 s, doubling), at most
    `max_attempts` times in all, and never when `Retry-After` asks for more than
    `max_retry_wait_s`; `sleep` is what waits (tests pass their own). Every failure raises
    `WebhookdError`.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        max_retry_wait_s: float = DEFAULT_MAX_RETRY_WAIT_S,
        sleep: Sleep | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.address = parse_address(url)
        self.api_key = api_key or os.environ.get("WEBHOOKD_API_KEY") or None
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.max_retry_wait_s = max_retry_wait_s
        self._sleep: Sleep = sleep or asyncio.sleep
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None or self._session.closed:
            unix = self.address.unix_path
            connector = aiohttp.UnixConnector(path=unix) if unix else aiohttp.TCPConnector()
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout_s)
            )
        return self._session

    # --- the one way to call the API ------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Call `path` (e.g. `/v1/events`) with a JSON body; the answer's JSON, or None."""
        attempt = 1
        while True:
            status, retry_after, raw = await self._send(method, path, params, body, headers)
            if status < 400:
                return self._parse(status, raw)
            error = error_from_answer(status, raw, retry_after)
            wait_s = self._retry_wait_s(status, error.retry_after_s, attempt)
            if wait_s is None:
                raise error
            await self._sleep(wait_s)
            attempt += 1

    def _retry_wait_s(self, status: int, retry_after_s: float | None, attempt: int) -> float | None:
        """How long to wait before sending again, or None to give up now."""
        if status not in RETRY_STATUSES or attempt >= self.max_attempts:
            return None
        if retry_after_s is None:
            backoff_s: float = FIRST_BACKOFF_S * 2.0 ** (attempt - 1)
            return min(backoff_s, self.max_retry_wait_s)
        # Coming back earlier than asked would only be refused again.
        return retry_after_s if retry_after_s <= self.max_retry_wait_s else None

    async def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        body: Any,
        extra: Mapping[str, str] | None,
    ) -> tuple[int, str | None, bytes]:
        import aiohttp

        headers = {"Accept": "application/json", "User-Agent": f"webhookd-client/{__version__}"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None
        if body is not None:
            data = json.dumps(body, ensure_ascii=False).encode()
            headers["Content-Type"] = "application/json"
        headers.update(extra or {})
        url = self.address.base + path
        try:
            async with self._http().request(
                method, url, params=_query(params or {}), data=data, headers=headers
            ) as resp:
                return resp.status, resp.headers.get("Retry-After"), await resp.read()
        except aiohttp.ClientConnectorSSLError as exc:
            raise await self._tls_failure(exc) from None
        except aiohttp.ClientConnectorError as exc:
            raise _unreachable(self.address, exc.os_error) from None
        except TimeoutError:
            raise WebhookdError(
                f"{self.address.shown} did not answer within {self.timeout_s:g} s", code="timeout"
            ) from None
        except aiohttp.ClientError as exc:
            reason = str(exc) or type(exc).__name__
            raise WebhookdError(
                f"cannot talk to {self.address.shown}: {reason}", code="connection_error"
            ) from None

    async def _tls_failure(self, exc: Exception) -> WebhookdError:
        """A failed TLS handshake: most often https:// in front of the plain-http API."""
        plain = "http://" + self.address.base.removeprefix("https://")
        if await _answers_plain_http(plain):
            return WebhookdError(
                f"the API at {self.address.shown} speaks plain http; use {plain}",
                code="tls_mismatch",
            )
        os_error = getattr(exc, "os_error", None)
        reason = getattr(os_error, "reason", None) or str(os_error or exc)
        return WebhookdError(f"TLS with {self.address.shown} failed: {reason}", code="tls")

    def _parse(self, status: int, raw: bytes) -> Any:
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise WebhookdError(
                f"{self.address.shown} answered {status} with something that is not JSON; "
                "is that the webhookd API?",
                code="not_json",
            ) from None

    # --- events -----------------------------------------------------------------------

    async def publish(
        self,
        type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        id: str | None = None,
        tenant: str | None = None,
        deliver_at: str | None = None,
        channels: Sequence[str] | None = None,
    ) -> PublishResult:
        """Publish one event; answered once it and its deliveries are on disk. With `id`,
        publishing again changes nothing (the same body) or raises a 409 (another body).
        With `channels`, endpoints that have channels get it only if they share one."""
        body = _given(
            type=type,
            payload=dict(payload or {}),
            id=id,
            tenant=tenant,
            deliver_at=deliver_at,
            channels=list(channels) if channels is not None else None,
        )
        return cast(PublishResult, await self.request("POST", "/v1/events", body=body))

    async def publish_batch(self, events: Sequence[EventIn]) -> list[PublishResult]:
        """Publish up to 1000 events in one transaction: all or none."""
        answer = await self.request("POST", "/v1/events/batch", body={"events": list(events)})
        return cast(list[PublishResult], answer["data"])

    async def get_event(self, event_id: str, *, tenant: str | None = None) -> EventDetail:
        params = _given(tenant=tenant)
        return cast(EventDetail, await self.request("GET", _p("events", event_id), params=params))

    async def erase_payload(self, event_id: str, *, tenant: str | None = None) -> None:
        """Erase the event's stored payload now: it stays listed with payload None, and its
        pending and in-flight deliveries are cancelled. Erasing again changes nothing."""
        path = _p("events", event_id, "payload")
        await self.request("DELETE", path, params=_given(tenant=tenant))

    async def list_events(
        self,
        *,
        type: str | None = None,
        tenant: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Event]:
        params = _given(
            type=type, tenant=tenant, since=since, until=until, limit=limit, cursor=cursor
        )
        return cast(Page[Event], await self.request("GET", "/v1/events", params=params))

    # --- endpoints --------------------------------------------------------------------

    async def create_endpoint(
        self,
        url: str,
        *,
        events: Sequence[str] | None = None,
        tenant: str | None = None,
        description: str | None = None,
        secret: str | None = None,
        **fields: Any,
    ) -> Endpoint:
        """Create an endpoint; the answer carries its `secret`. `fields` are any other
        endpoint fields of the API (`signature`, `format`, `headers`, `rate_limit_per_s`, …)."""
        body = _given(
            url=url,
            events=list(events) if events is not None else None,
            tenant=tenant,
            description=description,
            secret=secret,
        )
        body.update(fields)
        return cast(Endpoint, await self.request("POST", "/v1/endpoints", body=body))

    async def get_endpoint(self, endpoint_id: str) -> Endpoint:
        return cast(Endpoint, await self.request("GET", _p("endpoints", endpoint_id)))

    async def update_endpoint(self, endpoint_id: str, **fields: Any) -> Endpoint:
        """Change any endpoint field but `secret` (`active=False` disables it)."""
        return cast(
            Endpoint, await self.request("PATCH", _p("endpoints", endpoint_id), body=fields)
        )

    async def delete_endpoint(self, endpoint_id: str) -> None:
        await self.request("DELETE", _p("endpoints", endpoint_id))

    async def list_endpoints(
        self,
        *,
        tenant: str | None = None,
        active: bool | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Endpoint]:
        params = _given(tenant=tenant, active=active, limit=limit, cursor=cursor)
        return cast(Page[Endpoint], await self.request("GET", "/v1/endpoints", params=params))

    async def endpoint_secret(self, endpoint_id: str) -> Secret:
        return cast(Secret, await self.request("GET", _p("endpoints", endpoint_id, "secret")))

    async def rotate_secret(
        self,
        endpoint_id: str,
        *,
        secret: str | None = None,
        grace_s: float | None = None,
        algorithm: str | None = None,
    ) -> str:
        """A new signing secret (yours, or generated); the old one signs for `grace_s` more.
        `algorithm` (`hmac-sha256` or `ed25519`) switches the standard scheme's algorithm;
        the public key of an Ed25519 secret is in `endpoint_secret`."""
        path = _p("endpoints", endpoint_id, "secret", "rotate")
        body = _given(secret=secret, grace_s=grace_s, algorithm=algorithm)
        answer = await self.request("POST", path, body=body)
        return str(answer["secret"])

    async def test_endpoint(
        self,
        endpoint_id: str,
        *,
        event_type: str | None = None,
        payload: Mapping[str, Any] | None = None,
    ) -> TestResult:
        """One test event to this endpoint only (default type `webhookd.test`)."""
        body = _given(event_type=event_type, payload=dict(payload) if payload else None)
        path = _p("endpoints", endpoint_id, "test")
        return cast(TestResult, await self.request("POST", path, body=body))

    async def recover_endpoint(
        self, endpoint_id: str, *, since: str, until: str | None = None
    ) -> int:
        """Put the failed and skipped deliveries created in the window back to pending."""
        path = _p("endpoints", endpoint_id, "recover")
        answer = await self.request("POST", path, body=_given(since=since, until=until))
        return int(answer["requeued"])

    async def endpoint_stats(self, endpoint_id: str) -> Stats:
        return cast(Stats, await self.request("GET", _p("endpoints", endpoint_id, "stats")))

    # --- deliveries -------------------------------------------------------------------

    async def list_deliveries(
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
        params = _given(
            endpoint_id=endpoint_id,
            event_id=event_id,
            event_type=event_type,
            status=status,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )
        return cast(Page[Delivery], await self.request("GET", "/v1/deliveries", params=params))

    async def get_delivery(self, delivery_id: str) -> DeliveryDetail:
        """A delivery with every attempt, oldest first."""
        return cast(DeliveryDetail, await self.request("GET", _p("deliveries", delivery_id)))

    async def retry_delivery(self, delivery_id: str) -> Delivery:
        """Attempt the delivery again now, whatever its state."""
        path = _p("deliveries", delivery_id, "retry")
        return cast(Delivery, await self.request("POST", path))

    # --- event types ------------------------------------------------------------------

    async def list_event_types(self) -> list[EventType]:
        """The whole catalog, every page."""
        out: list[EventType] = []
        cursor = None
        while True:
            page = await self.request(
                "GET", "/v1/event-types", params=_given(limit=250, cursor=cursor)
            )
            out.extend(page["data"])
            cursor = page.get("next_cursor")
            if not cursor:
                return out

    async def create_event_type(
        self,
        name: str,
        description: str = "",
        *,
        schema: Mapping[str, Any] | None = None,
        example: Mapping[str, Any] | None = None,
    ) -> EventType:
        """Add a type; with `schema` (JSON Schema draft 2020-12) every payload published to
        it must validate, and `example` (which must validate) is what tests send."""
        body = {"name": name, "description": description}
        body.update(_given(schema=schema, example=example))
        return cast(EventType, await self.request("POST", "/v1/event-types", body=body))

    async def get_event_type(self, name: str) -> EventType:
        return cast(EventType, await self.request("GET", _p("event-types", name)))

    async def update_event_type(self, name: str, **changes: Any) -> EventType:
        """Change `description`, `schema` or `example` (None removes a schema or example)."""
        path = _p("event-types", name)
        return cast(EventType, await self.request("PATCH", path, body=changes))

    async def event_type_schema(self, name: str) -> dict[str, Any]:
        """The type's JSON Schema alone (a 404 WebhookdError when it has none)."""
        schema = await self.request("GET", _p("event-types", name, "schema"))
        return cast(dict[str, Any], schema)

    async def delete_event_type(self, name: str) -> None:
        await self.request("DELETE", _p("event-types", name))


def _p(*parts: str) -> str:
    """A /v1 path with each part quoted: ids come from users."""
    from urllib.parse import quote

    return "/v1/" + "/".join(quote(part, safe="") for part in parts)


async def _answers_plain_http(url: str) -> bool:
    """Whether something answers plain HTTP at `url` (any status will do)."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url + "/healthz") as resp,
        ):
            return resp.status > 0
    except (aiohttp.ClientError, TimeoutError, OSError, ssl.SSLError):
        return False
