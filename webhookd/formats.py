"""Request bodies: `json` (the envelope), `form` and `multipart`. Pure functions.

The stored payload is already JSON bytes; the json envelope splices those bytes in
unchanged instead of decoding and re-encoding them on every attempt.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlencode

import orjson

from webhookd import jsonio

FORMATS = ("json", "form", "multipart")


def json_body(
    event_id: str, event_type: str, timestamp: str, tenant: str | None, payload_json: bytes
) -> bytes:
    head: dict[str, Any] = {"id": event_id, "type": event_type, "timestamp": timestamp}
    if tenant is not None:
        head["tenant"] = tenant
    # orjson writes a compact object; replace its closing brace with the data member.
    return orjson.dumps(head)[:-1] + b',"data":' + payload_json + b"}"


def field_text(value: Any) -> str:
    """How one top-level payload value travels as a form field."""
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return value
    return jsonio.dumps(value).decode()


def form_body(payload: dict[str, Any]) -> bytes:
    return urlencode([(k, field_text(v)) for k, v in payload.items()]).encode("ascii")


def multipart_body(payload: dict[str, Any], boundary: str | None = None) -> tuple[bytes, str]:
    boundary = boundary or "webhookd-" + secrets.token_hex(16)
    parts: list[bytes] = []
    for key, value in payload.items():
        name = key.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "")
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + field_text(value).encode("utf-8")
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def render(
    fmt: str,
    *,
    event_id: str,
    event_type: str,
    timestamp: str,
    tenant: str | None,
    payload_json: bytes,
) -> tuple[bytes, str]:
    """(body, content type) of one request."""
    if fmt == "json":
        return json_body(event_id, event_type, timestamp, tenant, payload_json), "application/json"
    payload = jsonio.loads(payload_json)
    if not isinstance(payload, dict):
        payload = {"data": payload}
    if fmt == "form":
        return form_body(payload), "application/x-www-form-urlencoded"
    if fmt == "multipart":
        return multipart_body(payload)
    raise ValueError(f"unknown body format {fmt!r}")
