"""HTML form fields to and from the API's JSON bodies.

The console has no rules of its own about what a valid endpoint is: a form becomes the
body the API would receive, and the API's validation (webhookd.api.endpoints) judges it.
Text that does not parse as the type a field wants is passed on as text, so that the
API's message ("delay_s: expected a number") is what the form shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhookd.console import auth_form
from webhookd.console.routing_form import routing_body, routing_values
from webhookd.signing import REDACTED
from webhookd.store.interface import Endpoint

TLS_PARTS = ("client_cert", "client_key", "ca")


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.replace("\r", "").split("\n") if line.strip()]


def _pairs(text: str, sep: str) -> dict[str, str] | str:
    out: dict[str, str] = {}
    for line in _lines(text):
        name, found, value = line.partition(sep)
        if not found:
            return text  # the API explains what it expected
        out[name.strip()] = value.strip()
    return out


def _number(text: str, *, nullable: bool) -> Any:
    text = text.strip()
    if not text:
        return None if nullable else 0
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def events_list(text: str) -> list[str]:
    return [p for p in (t.strip() for t in text.replace(",", "\n").split("\n")) if p]


def endpoint_body(form: Mapping[str, Any], *, creating: bool, tenant_field: bool) -> dict[str, Any]:
    """The API body for a create or a full edit from the endpoint form."""

    def get(name: str) -> str:
        return str(form.get(name, ""))

    body: dict[str, Any] = {
        "url": get("url").strip(),
        "events": events_list(get("events")) or ["*"],
        "description": get("description"),
        "metadata": _pairs(get("metadata"), "="),
        "signature": {"scheme": get("scheme") or "standard"},
        "format": _format(get("format")),
        "headers": _pairs(get("headers"), ":"),
        "delay_s": _number(get("delay_s"), nullable=False),
        "rate_limit_per_s": _number(get("rate_limit_per_s"), nullable=True),
        "max_in_flight": _number(get("max_in_flight"), nullable=True),
        "ordered": form.get("ordered") == "on",
        "paused": form.get("paused") == "on",
        "proxy": get("proxy").strip() or None,
    }
    for key in ("signature_header", "timestamp_header"):
        if get(key).strip():
            body["signature"][key.replace("signature_", "")] = get(key).strip()
    if tenant_field:
        body["tenant"] = get("tenant").strip() or None
    if creating and get("secret").strip():
        body["secret"] = get("secret").strip()
    if creating and body["signature"]["scheme"] == "standard" and get("algorithm"):
        body["signature"]["algorithm"] = get("algorithm")
    tls = {part: get(part) for part in TLS_PARTS if get(part).strip()}
    if not creating and "client_cert" in tls and "client_key" not in tls:
        tls["client_key"] = REDACTED  # the form never shows the key: keep the stored one
    if form.get("tls_clear") == "on":
        body["tls"] = None
    elif tls:
        body["tls"] = tls
    elif creating:
        body.pop("tls", None)
    body.update(routing_body(form))
    if (auth := auth_form.auth_body(form, creating=creating)) is not auth_form.UNSET:
        body["auth"] = auth
    return body


def _format(text: str) -> str | list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) == 1:
        return parts[0]
    return parts or "json"


def endpoint_values(ep: Endpoint | None) -> dict[str, str]:
    """The form's fields for an endpoint (empty for a new one)."""
    if ep is None:
        return {"events": "*", "scheme": "standard", "format": "json", "delay_s": "0"}
    sig = ep.signature
    return {
        "url": ep.url,
        "events": "\n".join(ep.events),
        "tenant": ep.tenant or "",
        "description": ep.description,
        "metadata": "\n".join(f"{k}={v}" for k, v in ep.metadata.items()),
        "scheme": sig.scheme,
        "signature_header": sig.header or "",
        "timestamp_header": sig.timestamp_header or "",
        "format": ", ".join(ep.formats),
        "headers": "\n".join(f"{k}: {v}" for k, v in ep.headers.items()),
        "delay_s": f"{ep.delay_s:g}",
        "rate_limit_per_s": "" if ep.rate_limit_per_s is None else f"{ep.rate_limit_per_s:g}",
        "max_in_flight": "" if ep.max_in_flight is None else str(ep.max_in_flight),
        "ordered": "on" if ep.ordered else "",
        "paused": "on" if ep.paused else "",
        "proxy": "" if ep.proxy is None else _shown_proxy(ep.proxy),
        "client_cert": (ep.tls.client_cert or "") if ep.tls else "",
        "ca": (ep.tls.ca or "") if ep.tls else "",
        **routing_values(ep),
        **auth_form.auth_values(ep),
    }


def _shown_proxy(url: str) -> str:
    from webhookd.api.serialize import redacted_proxy

    return redacted_proxy(url) or ""


def problems_by_field(detail: list[dict[str, Any]]) -> dict[str, str]:
    """The API's 422 detail as field name -> message (the form shows them in place)."""
    out: dict[str, str] = {}
    for item in detail:
        loc = [str(p) for p in item.get("loc", [])[1:]]
        name = loc[0] if loc else "form"
        if name == "signature" and len(loc) > 1:
            name = {
                "header": "signature_header",
                "timestamp_header": "timestamp_header",
                "algorithm": "algorithm",
            }.get(loc[1], "scheme")
        if name == "tls" and len(loc) > 1:
            name = loc[1]
        if name == "filter" and len(loc) > 1:  # the place inside the filter
            item = {**item, "msg": f"{'.'.join(loc[1:])}: {item.get('msg', '')}"}
        if name == "auth":
            name = auth_form.field_name(loc)
        out.setdefault(name, item.get("msg", ""))
    return out
