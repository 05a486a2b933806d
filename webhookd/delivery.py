"""One HTTP attempt: POST a body, read at most a bounded response, classify what happened.

`send` never raises for network or protocol errors; it returns a Response whose
`error_kind` says what went wrong. No database here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from webhookd import __version__, http1

USER_AGENT = f"webhookd/{__version__}"
# Past what is kept for the log, a response body is read and thrown away up to this many
# bytes; beyond it the attempt fails as response_too_large, so a hostile endpoint cannot
# keep a worker busy streaming gigabytes.
DISCARD_LIMIT_BYTES = 1 << 20


@dataclass(slots=True)
class Response:
    status_code: int | None
    headers: dict[str, str]
    body: str
    error_kind: str | None
    error_message: str | None
    duration_ms: int
    request_headers: dict[str, str]

    @property
    def ok(self) -> bool:
        return (
            self.error_kind is None
            and self.status_code is not None
            and (200 <= self.status_code < 300)
        )

    def header(self, name: str) -> str | None:
        return header(self.headers, name)


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A response header by name, whatever case the endpoint wrote it in (names are kept
    as sent, for the delivery log)."""
    value = headers.get(name)
    if value is not None:
        return value
    lower = name.lower()
    for key, value in headers.items():
        if key.lower() == lower:
            return value
    return None


def sent_headers(url: str, headers: Mapping[str, str], body: bytes) -> dict[str, str]:
    """The full header set as it goes on the wire (what the delivery log shows)."""
    out = {"Host": http1.target(url).host_header}
    out.update(headers)
    out["Content-Length"] = str(len(body))
    return out


async def send(
    client: http1.Client,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout_s: float,
    max_response_bytes: int,
    route: http1.Route = http1.DIRECT,
) -> Response:
    started = time.monotonic()
    try:
        wire_headers = sent_headers(url, headers, body)
    except http1.Failure as exc:  # the URL is not one we can send to
        return _failed(exc, dict(headers), started)
    try:
        answer = await client.post(
            url,
            http1.header_block(wire_headers),
            body,
            timeout_s=timeout_s,
            keep=max_response_bytes,
            discard=max(DISCARD_LIMIT_BYTES, max_response_bytes),
            route=route,
        )
    except http1.Failure as exc:
        return _failed(exc, wire_headers, started)
    status = answer.status
    text = answer.body.decode("utf-8", errors="replace")
    kind: str | None = None
    message: str | None = None
    if answer.too_large:
        kind = "response_too_large"
        message = (
            f"the response body exceeded {DISCARD_LIMIT_BYTES} bytes; the endpoint "
            "should answer with a short body"
        )
    elif 300 <= status < 400:
        location = header(answer.headers, "Location") or "?"
        kind = "redirect"
        message = (
            f"the endpoint redirected ({status} to {location[:200]}); redirects are not "
            "followed, so set the endpoint URL to the final address"
        )
    elif not 200 <= status < 300:
        message = f"the endpoint answered HTTP {status}"
    return Response(
        status_code=status,
        headers=answer.headers,
        body=text,
        error_kind=kind,
        error_message=message,
        duration_ms=int((time.monotonic() - started) * 1000),
        request_headers=wire_headers,
    )


def _failed(exc: http1.Failure, request_headers: dict[str, str], started: float) -> Response:
    return Response(
        status_code=exc.status,
        headers=exc.headers,
        body=exc.body.decode("utf-8", errors="replace"),
        error_kind=exc.kind,
        error_message=exc.message,
        duration_ms=int((time.monotonic() - started) * 1000),
        request_headers=request_headers,
    )
