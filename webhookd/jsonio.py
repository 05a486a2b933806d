"""JSON in and out without losing data, and the limits on what a stored value may be.

Request bodies that may hold an integer beyond 64 bits are parsed with the standard
library, which keeps integers exactly (orjson would turn one into a float and silently
change a customer's payload); both refuse NaN and Infinity, which are not JSON. Python's
int() refuses more than 4,300 digits (a guard against its quadratic conversion), so a
longer integer is kept as its own text, an `orjson.Fragment`, and written back byte for
byte: integers of any length pass through exactly and cost no conversion.

Output uses orjson. What JSON text cannot carry is a JSONError naming where it is: a lone
UTF-16 surrogate (`"\\ud800"` parses, but no UTF-8 text can hold it) and, for stored
values, nesting deeper than MAX_DEPTH levels.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Generator
from typing import Any

import orjson

# Objects and arrays a payload may nest (`{}` is one level). orjson writes at most 254;
# the envelope and the idempotency hash each wrap a payload once more.
MAX_DEPTH = 128
_ORJSON_MAX_DEPTH = 254
_PAD = _ORJSON_MAX_DEPTH - MAX_DEPTH
# Python refuses int() of more digits than this (0 means unlimited: still keep the text).
INT_MAX_DIGITS = sys.get_int_max_str_digits() or 4300

Path = tuple[str | int, ...]


class JSONError(ValueError):
    """Not JSON, or not a value webhookd can store; `path` says where, when known."""

    def __init__(self, message: str, path: Path = ()) -> None:
        super().__init__(message)
        self.path = path


class TooLarge(JSONError):
    """A value of a streamed object is longer than the bytes allowed for one."""


class NotAnObject(JSONError):
    """A streamed document is JSON, but not an object."""


def _no_constants(name: str) -> Any:
    raise JSONError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise JSONError(f"the number {text[:40]} is too large for a 64-bit float")
    return value


def _exact_int(text: str) -> Any:
    if len(text) - text.startswith("-") <= INT_MAX_DIGITS:
        return int(text)
    return orjson.Fragment(text)


_decoder = json.JSONDecoder(
    parse_constant=_no_constants, parse_float=_finite_float, parse_int=_exact_int
)


# 19 digits in a row: maybe an integer beyond 64 bits (or a long fraction or string of
# digits, which the slower parser handles just as well); an exponent of 3 digits: maybe a
# float beyond the 64-bit range, which would silently become infinity (and then null).
# Looked for as plain substrings once every digit reads 0, E reads e and a sign s: a regular
# expression with these alternatives costs several times the orjson parse itself.
_FOLD = bytes.maketrans(b"0123456789E+-", b"0000000000ess")


def _needs_slow_path(data: bytes | bytearray) -> bool:
    folded = data.translate(_FOLD)
    return b"0000000000000000000" in folded or b"e000" in folded or b"es000" in folded


def loads(data: bytes | bytearray | str) -> Any:
    """Parse one JSON document; JSONError with a short reason if it is not one.

    orjson parses what it parses exactly as the standard library does, except integers
    beyond 64 bits; so a document without a run of 19 digits (or a 3-digit exponent)
    goes through orjson, and anything orjson refuses goes through the standard library
    for its verdict and its error message. Numbers beyond the range of a 64-bit float are
    refused rather than turned into infinity; integers longer than INT_MAX_DIGITS come
    back as orjson.Fragment (their exact text)."""
    if isinstance(data, bytes | bytearray) and not _needs_slow_path(data):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    try:
        text = (data.decode("utf-8") if isinstance(data, bytes | bytearray) else data).strip()
        value, end = _decoder.raw_decode(text)
        if end != len(text):
            raise JSONError(f"extra data after the JSON value at character {end}")
        return value
    except UnicodeDecodeError:
        raise JSONError("the body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise JSONError(f"{exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except RecursionError:
        raise JSONError("nested too deeply") from None


def dumps(value: Any) -> bytes:
    """Compact JSON of `value`; JSONError (with its path) for a lone surrogate."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return orjson.dumps(writable(value, _ORJSON_MAX_DEPTH))


def dump_payload(value: Any) -> tuple[bytes, Any]:
    """(compact JSON, the value as orjson writes it) of a value to store and send:
    JSONError with the path of a lone surrogate, or for nesting over MAX_DEPTH levels.

    The returned value has integers beyond 64 bits as their text, so that orjson alone
    writes it again (sorted keys for a hash included)."""
    try:
        out = orjson.dumps(value)
        if out.count(b"[") + out.count(b"{") > MAX_DEPTH:
            # Enough containers to nest too deep: orjson's own depth limit checks it in
            # C, with the value inside _PAD lists (passes exactly at MAX_DEPTH or less).
            wrapped = value
            for _ in range(_PAD):
                wrapped = [wrapped]
            orjson.dumps(wrapped)
        return out, value
    except orjson.JSONEncodeError as exc:
        if "ecursion" in str(exc):
            raise JSONError(f"nested more than {MAX_DEPTH} levels deep") from None
    value = writable(value, MAX_DEPTH)
    return orjson.dumps(value), value


def writable(value: Any, max_depth: int) -> Any:
    """`value` with integers beyond 64 bits as their text; JSONError naming the path of
    a lone surrogate, or of nesting deeper than `max_depth`."""
    return _writable(value, (), max_depth)


def _writable(value: Any, path: Path, depth_left: int) -> Any:
    if isinstance(value, str):
        _check_text(value, path)
        return value
    if isinstance(value, bool) or not isinstance(value, int | list | dict):
        return value
    if isinstance(value, int):
        if -(1 << 63) <= value < (1 << 64):
            return value
        try:
            return orjson.Fragment(str(value))
        except ValueError:
            raise JSONError(f"an integer of more than {INT_MAX_DIGITS} digits", path) from None
    if depth_left <= 0:
        raise JSONError(f"nested more than {MAX_DEPTH} levels deep", path)
    if isinstance(value, list):
        return [_writable(v, (*path, i), depth_left - 1) for i, v in enumerate(value)]
    out: dict[str, Any] = {}
    for k, v in value.items():
        _check_text(k, path, key=True)
        out[k] = _writable(v, (*path, k), depth_left - 1)
    return out


def _check_text(text: str, path: Path, *, key: bool = False) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        what = "an object key" if key else "a string"
        raise JSONError(
            f"{what} holds a lone UTF-16 surrogate (such as \\ud800), which UTF-8 cannot "
            "carry; send characters, or surrogate pairs",
            path,
        ) from None


# --- an object parsed member by member -------------------------------------------------
#
# Parsed JSON takes many times its text as Python objects ({"a":1} is 7 bytes of text and
# some 230 bytes of dict): a 16 MiB batch of events whose payloads held small objects
# took 420 MiB at once. So a large batch is parsed one event at a time: this walks the
# object and its array by hand (only the punctuation between values) and hands each
# value to the parsers above, never more than `max_value_bytes` of text at once.

_WS = re.compile(rb"[ \t\n\r]*")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_VALUE_START = frozenset(b'["-0123456789tfn')

Members = Generator[tuple[str, int | None, Any], None, None]


def _skip(data: bytes | bytearray, pos: int) -> int:
    m = _WS.match(data, pos)
    return m.end() if m else pos


def iter_members(data: bytes | bytearray, array_key: str, max_value_bytes: int) -> Members:
    """The members of the JSON object `data`, each parsed as it comes: (key, None, value),
    except that the array of `array_key` comes as (array_key, index, element) for each of
    its elements. JSONError when the text is not JSON (found as far as it was read),
    NotAnObject for JSON that is not an object, TooLarge (with its path) for a value
    longer than max_value_bytes."""
    pos = _skip(data, 0)
    if data[pos : pos + 1] != b"{":
        if pos < len(data) and data[pos] in _VALUE_START:
            raise NotAnObject("expected a JSON object")
        raise JSONError(f"expected a JSON object at byte {pos}")
    pos = _skip(data, pos + 1)
    if data[pos : pos + 1] != b"}":
        while True:
            key, pos = _member_name(data, pos)
            if key == array_key and data[pos : pos + 1] == b"[":
                pos = yield from _elements(data, pos + 1, key, max_value_bytes)
            else:
                value, pos = _one_value(data, pos, max_value_bytes, (key,))
                yield key, None, value
            pos = _after(data, pos, b"}")
            if data[pos - 1 : pos] == b"}":
                break
    else:
        pos += 1
    if _skip(data, pos) != len(data):
        raise JSONError(f"extra data after the JSON value at byte {pos}")


def _member_name(data: bytes | bytearray, pos: int) -> tuple[str, int]:
    m = _STRING.match(data, pos)
    if m is None:
        raise JSONError(f"expected a member name in double quotes at byte {pos}")
    key = loads(m.group())
    pos = _skip(data, m.end())
    if data[pos : pos + 1] != b":":
        raise JSONError(f"expected ':' at byte {pos}")
    return key, _skip(data, pos + 1)


def _after(data: bytes | bytearray, pos: int, close: bytes) -> int:
    """Past the ',' (and blanks) or the closing bracket that follows a value."""
    pos = _skip(data, pos)
    mark = data[pos : pos + 1]
    if mark == close:
        return pos + 1
    if mark != b",":
        raise JSONError(f"expected ',' or {close.decode()!r} at byte {pos}")
    return _skip(data, pos + 1)


def _elements(
    data: bytes | bytearray, pos: int, key: str, max_value_bytes: int
) -> Generator[tuple[str, int | None, Any], None, int]:
    pos = _skip(data, pos)
    if data[pos : pos + 1] == b"]":
        return pos + 1
    index = 0
    while True:
        value, pos = _one_value(data, pos, max_value_bytes, (key, index))
        yield key, index, value
        index += 1
        pos = _after(data, pos, b"]")
        if data[pos - 1 : pos] == b"]":
            return pos


def _one_value(
    data: bytes | bytearray, pos: int, max_value_bytes: int, path: Path
) -> tuple[Any, int]:
    """The value that starts at `pos`, parsed exactly, and the byte after it.

    It is looked for in a window of the text that starts small and grows: a parser's
    error holds its whole input as a str, and windows of the largest size for every
    small value made glibc keep hundreds of MiB (measured: +135 MiB a 15 MiB batch)."""
    size = min(_FIRST_WINDOW, max_value_bytes)
    while True:
        stop = min(len(data), pos + size)
        end = _value_end(memoryview(data)[pos:stop], stop < len(data), path)
        if end is not None:
            break
        if size >= max_value_bytes:
            raise TooLarge(f"longer than {max_value_bytes} bytes", path)
        size = min(size * 4, max_value_bytes)
    try:
        return loads(data[pos : pos + end]), pos + end
    except JSONError as exc:
        raise JSONError(str(exc), path) from None


_FIRST_WINDOW = 16384


def _value_end(window: memoryview, cut: bool, path: Path) -> int | None:
    """Where the value at the start of `window` ends; None if it may go on past a `cut`
    window; JSONError if it is not JSON."""
    try:
        # orjson parses one value and names where the content after it starts.
        orjson.loads(window)
        # The whole window is one value: unless it is the end of the text, the value may
        # go on past it (a number cut short is still a number).
        return None if cut else len(window)
    except orjson.JSONDecodeError as exc:
        if exc.msg.startswith("unexpected content after"):
            # A position in the str the error holds: in characters, not bytes.
            return len(exc.doc[: exc.pos].encode("utf-8", "surrogatepass"))
        if cut and exc.msg.startswith("unexpected end of data"):
            return None
    # What orjson refuses (a lone surrogate, say): the standard library decides.
    text = bytes(window).decode("utf-8", "surrogateescape")
    try:
        _, end = _decoder.raw_decode(text)
    except json.JSONDecodeError as exc:
        # Cut short, a value fails at its end, or in the escape or the string at its end.
        if cut and (exc.pos >= len(text) - 12 or exc.msg.startswith("Unterminated string")):
            return None
        raise JSONError(f"{exc.msg} at byte {exc.pos} of the value", path) from None
    except RecursionError:
        raise JSONError("nested too deeply", path) from None
    if cut and end == len(text):
        return None
    return len(text[:end].encode("utf-8", "surrogateescape"))
