"""The endpoint form's receiver authentication fields, to and from the API's `auth`.

The secrets (password, token, client secret) are write-only here as in the API: the form
never shows them, and on an edit a secret field left empty sends [redacted], which keeps
the stored secret (the API refuses it, naming the field, when there is none to keep).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhookd.signing import REDACTED
from webhookd.store.interface import Endpoint

UNSET: Any = object()
TYPES = ("none", "basic", "bearer", "oauth2")
SHOWN = {  # form field -> auth part, for the parts the form shows again
    "auth_username": "username",
    "auth_token_url": "token_url",
    "auth_client_id": "client_id",
    "auth_scope": "scope",
    "auth_audience": "audience",
}
SECRETS = {"basic": "password", "bearer": "token", "oauth2": "client_secret"}


def auth_body(form: Mapping[str, Any], *, creating: bool) -> Any:
    """The `auth` value of the form, or UNSET (a new endpoint without auth)."""

    def get(name: str) -> str:
        return str(form.get(name, ""))

    kind = get("auth_type") or "none"
    if kind == "none":
        return UNSET if creating else None
    out: dict[str, Any] = {"type": kind}
    if kind == "basic":
        out["username"] = get("auth_username").strip()
    elif kind == "oauth2":
        for field in ("auth_token_url", "auth_client_id", "auth_scope", "auth_audience"):
            if get(field).strip():
                out[SHOWN[field]] = get(field).strip()
    elif kind != "bearer":
        out["type"] = kind  # the API names what it expects
        return out
    secret = get(f"auth_{SECRETS[kind]}")
    out[SECRETS[kind]] = REDACTED if not secret and not creating else secret
    return out


def auth_values(ep: Endpoint | None) -> dict[str, str]:
    """The form's fields for the endpoint's auth, its secrets left out."""
    auth = ep.auth if ep is not None else None
    if not auth:
        return {"auth_type": "none"}
    out = {"auth_type": str(auth.get("type", "none"))}
    for field, part in SHOWN.items():
        if isinstance(auth.get(part), str):
            out[field] = auth[part]
    return out


def field_name(loc: list[str]) -> str:
    """The form field of an API problem at ["auth", …] (loc without "body")."""
    part = loc[1] if len(loc) > 1 else "type"
    return "auth_type" if part not in (*SHOWN.values(), *SECRETS.values()) else f"auth_{part}"
