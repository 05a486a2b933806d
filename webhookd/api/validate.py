"""Reading and checking request input: bounded JSON bodies, fields, query parameters.

Each check appends `{"loc": [...], "msg": ...}` to a list of problems so that one
response names everything that is wrong, not only the first thing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from webhookd import jsonio
from webhookd.api.errors import ApiError, validation_error
from webhookd.store.codec import BadCursor, decode_cursor
from webhookd.timefmt import parse_rfc3339

Loc = tuple[str | int, ...]
MISSING: Any = object()
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")


class Problems:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, loc: Loc, msg: str) -> None:
        self.items.append({"loc": list(loc), "msg": msg})

    def raise_if_any(self) -> None:
        if self.items:
            raise validation_error(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)


async def read_json(request: web.Request, limit: int) -> Any:
    """The parsed body, refused with 413 as soon as it is known to exceed `limit` bytes:
    from Content-Length before reading, or while reading a chunked body."""
    return parse_json(await read_body(request, limit))


# A body this large is read into one buffer of its exact size (aiohttp's read() would
# build it twice and keep a copy on the request until the answer is sent).
LARGE_BODY_BYTES = 1 << 20


async def read_body(request: web.Request, limit: int) -> bytes | bytearray:
    """The raw body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    length = request.content_length
    if length is not None and length > limit:
        raise ApiError(413, f"the request body is {length} bytes; at most {limit} are accepted")
    # The Content-Type is not checked: the body must parse as JSON whatever it says, which
    # keeps `curl -d '{...}'` (sent as form data) working.
    if length is not None and length <= LARGE_BODY_BYTES:
        # Known and small: one read, without an iterator per request.
        return await request.read()
    buf = bytearray(length or 0)
    total = 0
    async for chunk in request.content.iter_chunked(65536):
        end = total + len(chunk)
        if end > limit:
            raise ApiError(413, f"the request body exceeds {limit} bytes")
        buf[total:end] = chunk
        total = end
    if total < len(buf):
        del buf[total:]
    return buf


def parse_json(raw: bytes | bytearray) -> Any:
    if not raw or raw.isspace():  # (strip() would copy a large body)
        raise ApiError(400, "the request body is empty; send a JSON object")
    try:
        return jsonio.loads(raw)
    except jsonio.JSONError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None


def require_object(body: Any, loc: Loc = ("body",)) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise validation_error([{"loc": list(loc), "msg": "expected a JSON object"}])
    return body


def unknown_fields(
    body: Mapping[str, Any], allowed: Iterable[str], problems: Problems, loc: Loc = ("body",)
) -> None:
    allowed_set = set(allowed)
    for key in body:
        if key not in allowed_set:
            problems.add(
                (*loc, key), f"unknown field; expected one of {', '.join(sorted(allowed_set))}"
            )


def string(
    value: Any, loc: Loc, problems: Problems, *, max_len: int = 1000, min_len: int = 0
) -> str | None:
    if not isinstance(value, str):
        problems.add(loc, "expected a string")
        return None
    if len(value) < min_len:
        problems.add(loc, f"expected at least {min_len} characters")
        return None
    if len(value) > max_len:
        problems.add(loc, f"expected at most {max_len} characters")
        return None
    if "\x00" in value:
        problems.add(loc, "NUL characters are not allowed")
        return None
    if lone_surrogate(value):
        problems.add(loc, SURROGATE_MSG)
        return None
    return value


SURROGATE_MSG = (
    "a lone UTF-16 surrogate (such as \\ud800) is not allowed: UTF-8 cannot carry it; "
    "send the character itself or a surrogate pair"
)


def lone_surrogate(text: str) -> bool:
    """Whether `text` holds a lone surrogate (JSON's "\\ud800" parses to one)."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def boolean(value: Any, loc: Loc, problems: Problems) -> bool | None:
    if not isinstance(value, bool):
        problems.add(loc, "expected true or false")
        return None
    return value


def number(
    value: Any,
    loc: Loc,
    problems: Problems,
    *,
    lo: float,
    hi: float,
    lo_open: bool = False,
    integer: bool = False,
) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.add(loc, "expected an integer" if integer else "expected a number")
        return None
    if integer and isinstance(value, float) and not value.is_integer():
        problems.add(loc, "expected an integer")
        return None
    try:
        f = float(value)
    except OverflowError:  # an integer beyond the float range: out of any bound here
        f = math.inf
    if not math.isfinite(f) or f < lo or f > hi or (lo_open and f == lo):
        low = f"greater than {lo:g}" if lo_open else f"at least {lo:g}"
        problems.add(loc, f"expected a number {low} and at most {hi:g}")
        return None
    return f


def string_map(
    value: Any, loc: Loc, problems: Problems, *, max_items: int, max_len: int = 1000
) -> dict[str, str] | None:
    if not isinstance(value, dict):
        problems.add(loc, "expected an object of strings")
        return None
    if len(value) > max_items:
        problems.add(loc, f"expected at most {max_items} entries")
        return None
    ok = True
    for k, v in value.items():
        if not isinstance(v, str):
            problems.add((*loc, k), "expected a string")
            ok = False
        elif len(v) > max_len or len(k) > 256:
            problems.add((*loc, k), f"expected at most {max_len} characters")
            ok = False
        elif lone_surrogate(k) or lone_surrogate(v):
            problems.add((*loc, k), SURROGATE_MSG)
            ok = False
    return dict(value) if ok else None


def timestamp(value: Any, loc: Loc, problems: Problems) -> int | None:
    try:
        return parse_rfc3339(value)
    except ValueError as exc:
        problems.add(loc, str(exc))
        return None


# --- query parameters ----------------------------------------------------------------


def query(request: web.Request, allowed: Iterable[str]) -> dict[str, str]:
    """The query parameters, refusing unknown and repeated ones."""
    problems = Problems()
    allowed_set = set(allowed) | {"limit", "cursor"}
    out: dict[str, str] = {}
    for key, value in request.query.items():
        if key not in allowed_set:
            problems.add(
                ("query", key),
                f"unknown query parameter; expected one of {', '.join(sorted(allowed_set))}",
            )
        elif key in out:
            problems.add(("query", key), "given more than once")
        else:
            out[key] = value
    problems.raise_if_any()
    return out


def paging(params: Mapping[str, str], problems: Problems) -> tuple[str | None, int]:
    limit = 50
    raw = params.get("limit")
    if raw is not None:
        # isdigit() alone admits "²" and other digits int() refuses; 3 digits bound int().
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 3 and 1 <= int(raw) <= 250):
            problems.add(("query", "limit"), "expected an integer from 1 to 250")
        else:
            limit = int(raw)
    cursor = params.get("cursor") or None
    if cursor is not None:
        try:
            decode_cursor(cursor)
        except BadCursor as exc:
            problems.add(("query", "cursor"), str(exc))
            cursor = None
    return cursor, limit


def query_bool(params: Mapping[str, str], name: str, problems: Problems) -> bool | None:
    raw = params.get(name)
    if raw is None:
        return None
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    problems.add(("query", name), "expected true or false")
    return None


def query_time(params: Mapping[str, str], name: str, problems: Problems) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    return timestamp(raw, ("query", name), problems)


def page_json(data: list[Any], next_cursor: str | None) -> dict[str, Any]:
    return {"data": data, "next_cursor": next_cursor}


__all__ = [
    "HEADER_NAME_RE",
    "MISSING",
    "ApiError",
    "Problems",
    "boolean",
    "lone_surrogate",
    "number",
    "page_json",
    "paging",
    "parse_json",
    "query",
    "query_bool",
    "query_time",
    "read_body",
    "read_json",
    "require_object",
    "string",
    "string_map",
    "timestamp",
    "unknown_fields",
]
