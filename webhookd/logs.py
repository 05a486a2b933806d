"""Logging set-up: one line per record, as text or JSON, with stable field names.

Every record may carry an `event` field (a stable name per kind of line) and further
fields passed through `extra=`. Lines go to stderr, which journald collects.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp.http_exceptions import HttpProcessingError

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


def _ts(record: logging.LogRecord) -> str:
    dt = datetime.fromtimestamp(record.created, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _ts(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", "log"),
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        event = fields.pop("event", None)
        parts = [_ts(record), record.levelname.lower(), record.getMessage()]
        if event:
            parts.append(f"event={event}")
        parts += [f"{k}={_text(v)}" for k, v in fields.items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "='):
        return orjson.dumps(text).decode()
    return text


class QuietMalformedRequests(logging.Filter):
    """aiohttp logs a client's malformed HTTP request (a NUL in a header, say) as an error
    with a traceback. It is the client's mistake, answered with a 400: keep it to one line
    at debug level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "aiohttp.server" or not record.exc_info:
            return True
        exc = record.exc_info[1]
        if not isinstance(exc, HttpProcessingError):
            return True
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            return False
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg, record.args = "malformed HTTP request: %s", (" ".join(str(exc).split())[:200],)
        record.event = "bad_http_request"
        return True


def setup(level: str, fmt: str) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(QuietMalformedRequests())
    root.addHandler(handler)
    apply_level(level)


def apply_level(level: str) -> None:
    logging.getLogger().setLevel(LEVELS.get(level, logging.INFO))
    # aiohttp's access log would log every publish; keep it to warnings.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # aiosqlite logs every statement with its parameters at debug level, endpoint secrets
    # included: never let it through.
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
