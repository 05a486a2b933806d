"""Readable output: aligned tables, key/value views, and the renderers of each command."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from webhookd.client.api import Render

if TYPE_CHECKING:
    pass

# --- tables and key/value views -----------------------------------------------------------

Column = tuple[str, Callable[[dict[str, Any]], Any], int]


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return " ".join(str(value).split())


def short_time(value: Any) -> str:
    """`2026-01-31T12:00:00.123Z` as `2026-01-31 12:00:00`, for narrow columns."""
    if not isinstance(value, str):
        return cell(value)
    return re.sub(r"(\.\d+)?Z$", "", value).replace("T", " ")


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column], empty: str) -> str:
    """Aligned columns under a header row; long cells end in "…"."""
    if not rows:
        return empty
    headers = [name for name, _, _ in columns]
    body = [[_fit(cell(get(row)), width) for _, get, width in columns] for row in rows]
    widths = [max(len(v) for v in col) for col in zip(headers, *body, strict=True)]
    lines = [headers, *body]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def keyvalues(doc: Mapping[str, Any], skip: Sequence[str] = ()) -> str:
    items = [(key, cell(value)) for key, value in doc.items() if key not in skip]
    width = max((len(key) for key, _ in items), default=0) + 1
    return "\n".join(f"{key + ':':<{width}} {value}".rstrip() for key, value in items)


def _get(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: row.get(key)


def _time(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: short_time(row.get(key))


def _active(row: dict[str, Any]) -> str:
    if row.get("active"):
        return "paused" if row.get("paused") else "yes"
    reason = row.get("disabled_reason")
    return f"no ({reason})" if reason else "no"


def _result(attempt: dict[str, Any]) -> Any:
    return attempt.get("status_code") or attempt.get("error_kind")


def _detail(attempt: dict[str, Any]) -> Any:
    return attempt.get("error_message") or attempt.get("response_body") or None


ENDPOINT_COLUMNS: list[Column] = [
    ("ID", _get("id"), 40),
    ("URL", _get("url"), 48),
    ("TENANT", _get("tenant"), 24),
    ("EVENTS", _get("events"), 32),
    ("ACTIVE", _active, 16),
]
EVENT_COLUMNS: list[Column] = [
    ("ID", _get("id"), 40),
    ("TYPE", _get("type"), 32),
    ("TENANT", _get("tenant"), 24),
    ("CREATED", _time("created_at"), 20),
]
DELIVERY_COLUMNS: list[Column] = [
    ("ID", _get("id"), 40),
    ("STATUS", _get("status"), 10),
    ("ATTEMPTS", _get("attempt_count"), 8),
    ("EVENT TYPE", _get("event_type"), 32),
    ("ENDPOINT", _get("endpoint_id"), 40),
    ("NEXT ATTEMPT", _time("next_attempt_at"), 20),
]
EVENT_DELIVERY_COLUMNS: list[Column] = [
    ("ID", _get("id"), 40),
    ("STATUS", _get("status"), 10),
    ("ATTEMPTS", _get("attempt_count"), 8),
    ("ENDPOINT", _get("endpoint_id"), 40),
    ("NEXT ATTEMPT", _time("next_attempt_at"), 20),
]
ATTEMPT_COLUMNS: list[Column] = [
    ("#", _get("number"), 4),
    ("STARTED", _time("started_at"), 20),
    ("TRIGGER", _get("trigger"), 9),
    ("FORMAT", _get("format"), 9),
    ("RESULT", _result, 20),
    ("MS", _get("duration_ms"), 7),
    ("DETAIL", _detail, 60),
]
EVENT_TYPE_COLUMNS: list[Column] = [
    ("NAME", _get("name"), 40),
    ("SOURCE", _get("source"), 8),
    ("SCHEMA", lambda row: row.get("schema") is not None, 6),
    ("DESCRIPTION", _get("description"), 60),
]


def render_event_type(doc: Any, _args: argparse.Namespace) -> str:
    """The type's fields, then its schema and example as indented JSON."""
    lines = [keyvalues(doc, skip=("schema", "example"))]
    for key in ("schema", "example"):
        value = doc.get(key)
        if value is None:
            lines.append(f"{key}: -")
        else:
            text = json.dumps(value, indent=2, ensure_ascii=False)
            lines.append(f"{key}:\n" + "\n".join("  " + line for line in text.splitlines()))
    return "\n".join(lines)


def render_list(columns: Sequence[Column], empty: str) -> Render:
    return lambda doc, _args: table(doc["data"], columns, empty)


def render_endpoint(doc: Any, _args: argparse.Namespace) -> str:
    if isinstance(doc, dict) and doc.get("tls"):
        doc = {**doc, "tls": tls_summary(doc["tls"])}
    return keyvalues(doc)


def tls_summary(tls: Mapping[str, Any]) -> str:
    """The TLS settings in one line: which parts are set, PEM blocks counted, not printed
    (the key is [redacted] in the answer anyway; --json shows the whole answer)."""
    parts = []
    for name in ("client_cert", "client_key", "ca"):
        value = tls.get(name)
        if not isinstance(value, str):
            continue
        certs = value.count("-----BEGIN CERTIFICATE-----")
        if certs:
            parts.append(f"{name} ({certs} certificate{'' if certs == 1 else 's'})")
        else:
            parts.append(f"{name} {value}")
    return ", ".join(parts)


def render_event(doc: Any, _args: argparse.Namespace) -> str:
    payload = json.dumps(doc.get("payload"), indent=2, ensure_ascii=False)
    deliveries = table(doc.get("deliveries", []), EVENT_DELIVERY_COLUMNS, "  (none)")
    return (
        f"{keyvalues(doc, skip=('payload', 'deliveries'))}\n\n"
        f"payload:\n{payload}\n\ndeliveries:\n{deliveries}"
    )


def render_delivery(doc: Any, _args: argparse.Namespace) -> str:
    attempts = doc.get("attempts", [])
    shown = table(attempts, ATTEMPT_COLUMNS, "  (no attempts yet)")
    return f"{keyvalues(doc, skip=('attempts',))}\n\nattempts:\n{shown}{errors_in_full(attempts)}"


def errors_in_full(attempts: Sequence[dict[str, Any]]) -> str:
    """The error messages the DETAIL column had to cut, whole, below the table: a reason
    cut short is a reason that cannot be acted on."""
    width = next(w for name, _, w in ATTEMPT_COLUMNS if name == "DETAIL")
    cut = [
        f"#{a.get('number')}: {cell(a['error_message'])}"
        for a in attempts
        if a.get("error_message") and len(cell(a["error_message"])) > width
    ]
    return "\n\nerrors in full:\n" + "\n".join(cut) if cut else ""


def render_secret(doc: Any, _args: argparse.Namespace) -> str:
    lines = [f"secret: {doc['secret']}"]
    if doc.get("public_key"):
        lines.append(f"public key: {doc['public_key']}")
    for old in doc.get("previous_secrets", []):
        lines.append(f"previous secret still valid until {old.get('expires_at')}")
        if old.get("public_key"):
            lines.append(f"  its public key: {old['public_key']}")
    return "\n".join(lines)


def render_stats(doc: Any, _args: argparse.Namespace) -> str:
    rate = doc.get("success_rate_24h")
    view: dict[str, Any] = dict(doc.get("counts", {}))
    view["success rate 24h"] = "-" if rate is None else f"{rate * 100:.1f}%"
    view["in flight"] = doc.get("in_flight")
    view["last success"] = doc.get("last_success_at")
    view["failing since"] = doc.get("failing_since")
    return keyvalues(view)


def render_rotated(doc: Any, args: argparse.Namespace) -> str:
    grace = args.grace_s if args.grace_s is not None else 86400
    public = f"public key: {doc['public_key']}\n" if doc.get("public_key") else ""
    return (
        f"new secret: {doc['secret']}\n{public}"
        f"the previous secret also signs deliveries for {grace:g} s more"
    )


def render_published(doc: Any, _args: argparse.Namespace) -> str:
    n = doc["deliveries"]
    return f"published {doc['id']} ({doc['type']}) to {n} endpoint{'' if n == 1 else 's'}"


def render_requeued(doc: Any, _args: argparse.Namespace) -> str:
    n = doc["requeued"]
    return f"requeued {n} deliver{'y' if n == 1 else 'ies'}"


def render_retried(doc: Any, _args: argparse.Namespace) -> str:
    n, pending = doc["retried"], doc["pending"]
    line = f"queued {n} pending deliver{'y' if n == 1 else 'ies'} of {doc['endpoint_id']} "
    line += "for an attempt now"
    if pending > n:
        line += f" ({pending - n} had moved on meanwhile)"
    return line


def message(template: str) -> Render:
    """A render that formats `template` with the answer's fields and the arguments."""
    return lambda doc, args: template.format(
        doc=doc if isinstance(doc, dict) else {}, args=vars(args)
    )
