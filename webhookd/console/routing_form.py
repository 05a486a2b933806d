"""The endpoint form's routing fields (`channels`, `filter`) to and from the API body.

As for the other fields (webhookd.console.forms), the API's validation judges them: text
that is not JSON goes on as text, and the form's live preview (webhookd.console.routing)
says what is wrong with it while it is typed."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from webhookd import jsonio
from webhookd.store.interface import Endpoint


def names(text: str) -> list[str]:
    """Channel names, one a line or comma-separated."""
    return [p for p in (t.strip() for t in text.replace(",", "\n").split("\n")) if p]


def filter_value(text: str) -> Any:
    """The filter of the form's text: None when empty, else its JSON (or the text)."""
    if not text.strip():
        return None
    try:
        return jsonio.loads(text)
    except jsonio.JSONError:
        return text


def routing_body(form: Mapping[str, Any]) -> dict[str, Any]:
    """`channels` and `filter` for the API body (empty fields: none)."""
    return {
        "channels": names(str(form.get("channels", ""))) or None,
        "filter": filter_value(str(form.get("filter", ""))),
    }


def routing_values(ep: Endpoint) -> dict[str, str]:
    return {
        "channels": "\n".join(ep.channels or ()),
        "filter": "" if ep.filter is None else json.dumps(ep.filter, indent=2),
    }
