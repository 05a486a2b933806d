"""Authenticating to receivers: the Authorization header of an endpoint's `auth`.

basic and bearer are a header computed from the endpoint. oauth2 is the client-credentials
grant (RFC 6749 4.4): a token is POSTed for to the endpoint's token_url through the same
HTTP client as deliveries (its connection pool, address guard and proxy), cached per
endpoint until shortly before it expires, and shared: one fetch at a time per endpoint,
whoever else needs it waits for that one. A 401 from the receiver drops the token it was
sent with and the request is made again at once with a new one, once.

The whole attempt, token fetches included, stays within delivery.timeout_s: a fetch gets
at most TOKEN_TIMEOUT_S and never more than half of what is left, so the receiver's
request always keeps at least half of the attempt's time.

A token endpoint that fails makes the attempt fail with error kind `auth_token` and a
message naming what it answered, never a credential or the token; the failure is kept for
FAILURE_HOLD_S, so a burst of deliveries does not hammer a broken token endpoint. The
Authorization header is shown as [redacted] in the attempt's request headers.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus, urlencode

import orjson

from webhookd import delivery, http1
from webhookd.signing import REDACTED
from webhookd.store.interface import Endpoint

log = logging.getLogger("webhookd.receiver_auth")
AUTH_TOKEN = "auth_token"  # noqa: S105 - the attempt's error kind when no token could be had
TOKEN_TIMEOUT_S = 10.0
# A token is fetched again this long before it expires: 10 % of its lifetime, at most
# REFRESH_EARLY_MAX_S, so that it is never sent in its last moments.
REFRESH_EARLY_MAX_S = 30.0
REFRESH_EARLY_SHARE = 0.1
DEFAULT_LIFETIME_S = 3600.0  # a token answer without expires_in (it is only RECOMMENDED)
FAILURE_HOLD_S = 1.0
TOKEN_ANSWER_BYTES = 64 * 1024
# Below this much time left, a 401 is the attempt's answer: no time for another round.
MIN_RETRY_S = 0.2
HEADER_SAFE = re.compile(r"[\x21-\x7e]+")
# RFC 6749 5.2: error codes are %x20-21 / %x23-5B / %x5D-7E.
ERROR_CODE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,64}")

Sender = Callable[..., Awaitable[delivery.Response]]


class TokenError(Exception):
    """No token: `message` is the attempt's error message (no secret in it)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class _Cached:
    """One endpoint's token, for the auth object it was fetched with."""

    auth: dict[str, Any]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    token: str | None = field(default=None, repr=False)
    refresh_at: float = 0.0  # loop time
    failure: str | None = None
    failed_until: float = 0.0  # loop time

    def ready(self, now: float) -> str:
        """The token to use now; TokenError while a failure is held; "" to fetch."""
        if self.token is not None and now < self.refresh_at:
            return self.token
        if self.failure is not None and now < self.failed_until:
            raise TokenError(self.failure)
        return ""


@dataclass
class _Request:
    """One attempt's request to an endpoint with auth, and its time."""

    endpoint_id: str
    auth: dict[str, Any] = field(repr=False)
    route: http1.Route
    headers: Mapping[str, str]
    sender: Sender
    timeout_s: float
    deadline: float  # loop time

    async def send(self, authorization: str) -> delivery.Response:
        headers = {**self.headers, "Authorization": authorization}
        return await self.sender(headers, timeout_s=self.left())

    def left(self) -> float:
        """The time left for a request: all of timeout_s when nothing was waited for, else
        in tenths of a second (its timeout message shows it)."""
        left = self.deadline - asyncio.get_running_loop().time()
        if left > self.timeout_s - 0.01:
            return self.timeout_s
        return max(math.floor(left * 10) / 10, 0.1)


class ReceiverAuth:
    """The Authorization header for endpoints with `auth`, and the token cache."""

    def __init__(self, client: http1.Client) -> None:
        self.client = client
        self._cache: dict[str, _Cached] = {}

    def forget(self, endpoint_id: str) -> None:
        self._cache.pop(endpoint_id, None)

    async def send(
        self,
        ep: Endpoint,
        route: http1.Route,
        headers: Mapping[str, str],
        sender: Sender,
        timeout_s: float,
    ) -> delivery.Response:
        """`sender(headers, timeout_s=…)` with the endpoint's Authorization header added,
        again once with a new token after a 401 (oauth2), within `timeout_s` in all."""
        auth = ep.auth
        if not auth:
            return await sender(headers, timeout_s=timeout_s)
        loop = asyncio.get_running_loop()
        started = loop.time()
        req = _Request(ep.id, auth, route, headers, sender, timeout_s, started + timeout_s)
        try:
            value = await self._authorization(req)
        except TokenError as exc:
            return _no_token(exc.message, started, loop.time())
        resp = await req.send(value)
        if resp.status_code == 401 and resp.error_kind is None and auth.get("type") == "oauth2":
            resp = await self._again(req, value, resp)
        resp.request_headers = redact(resp.request_headers)
        resp.duration_ms = int((loop.time() - started) * 1000)
        return resp

    async def _again(
        self, req: _Request, refused: str, resp: delivery.Response
    ) -> delivery.Response:
        """After a 401: drop the refused token, get another (or the one a concurrent
        request already got) and send once more; the second answer is the attempt's."""
        if req.deadline - asyncio.get_running_loop().time() < MIN_RETRY_S:
            return resp
        cached = self._cache.get(req.endpoint_id)
        if cached is not None and refused == f"Bearer {cached.token}":
            cached.token = None
        try:
            value = await self._authorization(req)
        except TokenError as exc:
            resp.error_kind = AUTH_TOKEN
            resp.error_message = (
                f"the endpoint answered HTTP 401 and a new token could not be had: {exc.message}"
            )
            return resp
        return await req.send(value)

    async def _authorization(self, req: _Request) -> str:
        auth = req.auth
        kind = auth.get("type")
        if kind == "basic":
            pair = f"{auth['username']}:{auth.get('password', '')}".encode()
            return "Basic " + base64.b64encode(pair).decode("ascii")
        if kind == "bearer":
            return f"Bearer {auth['token']}"
        return f"Bearer {await self._token(req)}"

    async def _token(self, req: _Request) -> str:
        endpoint_id, auth, deadline = req.endpoint_id, req.auth, req.deadline
        cached = self._cache.get(endpoint_id)
        if cached is None or cached.auth != auth:
            # New, or the endpoint's auth changed: a token of other credentials is no use.
            cached = self._cache[endpoint_id] = _Cached(auth)
        loop = asyncio.get_running_loop()
        if token := cached.ready(loop.time()):
            return token
        try:
            async with asyncio.timeout_at(deadline):
                await cached.lock.acquire()
        except TimeoutError:
            raise TokenError(
                "no token within the attempt's time: another request was still waiting for "
                "the token endpoint"
            ) from None
        try:
            if token := cached.ready(loop.time()):
                return token  # fetched by the request that held the lock
            budget = min(TOKEN_TIMEOUT_S, (deadline - loop.time()) / 2)
            try:
                token, lifetime_s = await fetch_token(self.client, auth, req.route, budget)
            except TokenError as exc:
                cached.failure, cached.failed_until = exc.message, loop.time() + FAILURE_HOLD_S
                raise
            early = min(REFRESH_EARLY_MAX_S, lifetime_s * REFRESH_EARLY_SHARE)
            cached.token, cached.refresh_at = token, loop.time() + lifetime_s - early
            cached.failure = None
            log.debug(
                "token fetched",
                extra={
                    "event": "auth_token_fetched",
                    "endpoint_id": endpoint_id,
                    "expires_in_s": lifetime_s,
                },
            )
            return token
        finally:
            cached.lock.release()


def redact(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: REDACTED if k.lower() == "authorization" else v for k, v in headers.items()}


def _no_token(message: str, started: float, now: float) -> delivery.Response:
    """The attempt when no token could be had: nothing was sent to the receiver."""
    return delivery.Response(
        status_code=None,
        headers={},
        body="",
        error_kind=AUTH_TOKEN,
        error_message=message,
        duration_ms=int((now - started) * 1000),
        request_headers={},
    )


# --- the token request ----------------------------------------------------------------


def token_request(auth: Mapping[str, Any]) -> tuple[dict[str, str], bytes]:
    """The headers and form body of a client-credentials grant. The client authenticates
    with HTTP Basic, id and secret form-encoded first (RFC 6749 2.3.1)."""
    form = {"grant_type": "client_credentials"}
    for key in ("scope", "audience"):
        if auth.get(key):
            form[key] = auth[key]
    pair = f"{quote_plus(auth['client_id'])}:{quote_plus(auth['client_secret'])}"
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Accept": "application/json",
        "User-Agent": delivery.USER_AGENT,
        "Authorization": "Basic " + base64.b64encode(pair.encode()).decode("ascii"),
    }
    return headers, urlencode(form).encode("ascii")


async def fetch_token(
    client: http1.Client, auth: Mapping[str, Any], route: http1.Route, timeout_s: float
) -> tuple[str, float]:
    """(access token, lifetime in seconds) from the endpoint's token_url, or TokenError.

    Through the endpoint's proxy, like its deliveries; the endpoint's TLS settings are the
    receiver's and are not used here (the token endpoint is checked against the system
    trust store)."""
    url = auth["token_url"]
    headers, body = token_request(auth)
    try:
        wire = delivery.sent_headers(url, headers, body)
        answer = await client.post(
            url,
            http1.header_block(wire),
            body,
            timeout_s=max(timeout_s, 0.1),
            keep=TOKEN_ANSWER_BYTES,
            discard=TOKEN_ANSWER_BYTES,
            route=http1.Route(proxy=route.proxy),
        )
    except http1.Failure as exc:
        raise TokenError(
            f"the token endpoint could not be reached ({exc.kind}): {exc.message}"
        ) from None
    if answer.too_large:
        raise TokenError(f"the token endpoint's answer is larger than {TOKEN_ANSWER_BYTES} bytes")
    if not 200 <= answer.status < 300:
        raise TokenError(f"the token endpoint answered {answer.status}{_error_code(answer.body)}")
    return read_token(answer.body)


def read_token(body: bytes) -> tuple[str, float]:
    """The access token and its lifetime from a token answer (RFC 6749 5.1)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise TokenError("the token endpoint's answer is not JSON") from None
    if not isinstance(doc, dict):
        raise TokenError("the token endpoint's answer is not a JSON object")
    token = doc.get("access_token")
    if not isinstance(token, str) or not token:
        raise TokenError("the token endpoint's answer has no access_token")
    if not HEADER_SAFE.fullmatch(token) or len(token) > 8000:
        raise TokenError(
            "the token endpoint's access_token cannot be sent in a header (not visible ASCII, "
            "or longer than 8000 characters)"
        )
    token_type = doc.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise TokenError("the token endpoint issued a token that is not a Bearer token")
    return token, _lifetime_s(doc.get("expires_in"))


def _lifetime_s(value: Any) -> float:
    """expires_in: a number of seconds, or a string of one (some servers send that);
    absent or unreadable: DEFAULT_LIFETIME_S."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return DEFAULT_LIFETIME_S
    if isinstance(value, bool) or not isinstance(value, int | float):
        return DEFAULT_LIFETIME_S
    if not math.isfinite(value) or value < 0:
        return DEFAULT_LIFETIME_S
    return float(value)


def _error_code(body: bytes) -> str:
    """The OAuth error code of a refusal (invalid_client, …), when it has one."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    code = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(code, str) and ERROR_CODE.fullmatch(code):
        return f" ({code})"
    return ""
