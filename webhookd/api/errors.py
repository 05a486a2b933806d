"""The error format and the middleware that guarantees it.

Every error leaves as `{"error": code, "message": sentence}` (422 adds `detail`); no
traceback ever reaches a client, and bad input never becomes a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from webhookd.store.interface import Conflict, NotFound, StorageError

log = logging.getLogger("webhookd.api")

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        detail: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or CODES.get(status, "error")
        self.message = message
        self.detail = detail
        self.headers = headers or {}


def validation_error(detail: list[dict[str, Any]]) -> ApiError:
    first = detail[0]
    where = ".".join(str(p) for p in first["loc"][1:]) or first["loc"][0]
    more = f" (and {len(detail) - 1} more problems)" if len(detail) > 1 else ""
    return ApiError(422, f"{where}: {first['msg']}{more}", detail=detail)


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    try:
        body = orjson.dumps(data)
    except orjson.JSONEncodeError:
        # An error that quotes the caller's input (an unknown field's name, a `loc` key)
        # may hold a lone surrogate, which UTF-8 cannot carry: shown escaped instead.
        body = orjson.dumps(_printable(data))
    return web.Response(
        body=body,
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _printable(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, list | tuple):
        return [_printable(v) for v in value]
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -(1 << 63) <= value < (1 << 64) else str(value)
    return value


def error_body(err: ApiError) -> dict[str, Any]:
    body: dict[str, Any] = {"error": err.code, "message": err.message}
    if err.detail is not None:
        body["detail"] = err.detail
    return body


def error_response(err: ApiError) -> web.Response:
    return json_response(error_body(err), err.status, err.headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def api_error(exc: Exception) -> ApiError | None:
    """The API error an exception from a handler or the store stands for, or None when it
    is not one of ours (then it is a bug, or an HTTP exception of aiohttp's)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, NotFound):
        return ApiError(404, str(exc))
    if isinstance(exc, Conflict):
        return ApiError(409, str(exc))
    if isinstance(exc, StorageError):
        log.exception("storage error", extra={"event": "storage_error"})
        return ApiError(
            503, "storage cannot write right now; retry later", headers={"Retry-After": "5"}
        )
    return None


def internal_error(path: str) -> ApiError:
    """For an unexpected exception (call it from the except block, so that it is logged
    with its traceback)."""
    log.exception("unhandled error", extra={"event": "internal_error", "path": path})
    return ApiError(500, "internal error; the server log has the details")


def error_for(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The error answer for an exception a handler raised (call it from the except block,
    so that an unexpected error is logged with its traceback). Re-raises HTTP exceptions
    below 400, which aiohttp sends as they are."""
    err = api_error(exc)
    if err is not None:
        return error_response(err)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return error_response(ApiError(413, "the request body is too large"))
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        message = {
            404: f"no route for {request.path}",
            405: f"{request.method} is not allowed on {request.path}",
        }.get(exc.status, exc.reason)
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error_response(ApiError(exc.status, message, headers=headers))
    return error_response(internal_error(request.path))
