"""JSON in and out without losing data.

Request bodies that may hold an integer beyond 64 bits are parsed with the standard
library, which keeps integers of any size exactly (orjson would turn one into a float and
silently change a customer's payload); both refuse NaN and Infinity, which are not JSON.
Output uses orjson for speed and falls back to the standard library only for what orjson
cannot encode.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson


class JSONError(ValueError):
    pass


def _no_constants(name: str) -> Any:
    raise JSONError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise JSONError(f"the number {text[:40]} is too large for a 64-bit float")
    return value


_decoder = json.JSONDecoder(parse_constant=_no_constants, parse_float=_finite_float)


# 19 digits in a row: maybe an integer beyond 64 bits (or a long fraction or string of
# digits, which the slower parser handles just as well); an exponent of 3 digits: maybe a
# float beyond the 64-bit range, which would silently become infinity (and then null).
# Looked for as plain substrings once every digit reads 0, E reads e and a sign s: a regular
# expression with these alternatives costs several times the orjson parse itself.
_FOLD = bytes.maketrans(b"0123456789E+-", b"0000000000ess")


def _needs_slow_path(data: bytes) -> bool:
    folded = data.translate(_FOLD)
    return b"0000000000000000000" in folded or b"e000" in folded or b"es000" in folded


def loads(data: bytes | str) -> Any:
    """Parse one JSON document; JSONError with a short reason if it is not one.

    orjson parses what it parses exactly as the standard library does, except integers
    beyond 64 bits; so a document without a run of 19 digits (or a 3-digit exponent)
    goes through orjson, and anything orjson refuses goes through the standard library
    for its verdict and its error message. Numbers beyond the range of a 64-bit float are
    refused rather than turned into infinity."""
    if isinstance(data, bytes) and not _needs_slow_path(data):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
        value, end = _decoder.raw_decode(text.strip())
        if end != len(text.strip()):
            raise JSONError(f"extra data after the JSON value at character {end}")
        return value
    except UnicodeDecodeError:
        raise JSONError("the body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise JSONError(f"{exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except RecursionError:
        raise JSONError("nested too deeply") from None


def dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
