"""Argument types of the client commands: booleans, K=V pairs, JSON, relative times."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from webhookd.client.api import RELATIVE_RE, UNIT_S
from webhookd.formats import FORMATS

if TYPE_CHECKING:
    pass

# --- argument types -----------------------------------------------------------------------


def flag_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def comma_list(text: str) -> list[str]:
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def body_format(text: str) -> str | list[str]:
    items = comma_list(text)
    for item in items:
        if item not in FORMATS:
            raise argparse.ArgumentTypeError(f"expected {', '.join(FORMATS)}, got {item!r}")
    return items[0] if len(items) == 1 else items


def optional_number(text: str) -> float | str:
    """A number, or "none" to clear the setting."""
    if text.lower() == "none":
        return "none"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or none, got {text!r}") from None


def optional_int(text: str) -> int | str:
    """An integer, or "none" to go back to the default."""
    if text.lower() == "none":
        return "none"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or none, got {text!r}") from None


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('expected a JSON object, e.g. {"order_id": 1}')
    return value


def json_file(path: str) -> dict[str, Any]:
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc.strerror}") from None
    return json_object(text)


def text_file(path: str) -> str:
    """The text of a file (a PEM certificate, key or bundle), read when parsing."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise argparse.ArgumentTypeError(f"cannot read {path}: {reason}") from None


def _relative(text: str, sign: int) -> str:
    match = RELATIVE_RE.fullmatch(text.strip())
    if match is None:
        return text
    delta = timedelta(seconds=float(match.group(1)) * UNIT_S[match.group(2)])
    return (datetime.now(UTC) + sign * delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def ago(text: str) -> str:
    """An RFC 3339 time as given, or `30s`, `15m`, `2h`, `7d` before now."""
    return _relative(text, -1)


def from_now(text: str) -> str:
    """An RFC 3339 time as given, or `30s`, `15m`, `2h`, `7d` after now."""
    return _relative(text, 1)
