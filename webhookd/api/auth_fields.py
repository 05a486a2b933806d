"""The endpoint field `auth`: how webhookd authenticates to the receiver.

Checked here at create and PATCH, shown here in answers (its secrets as [redacted]), and
described here for the OpenAPI document, from one table of the parts of each type, so
that what the document promises and what the server accepts cannot drift apart. Sending
the credentials is webhookd.receiver_auth's.

Secrets (password, token, client_secret) are write-only. Sending [redacted] back keeps
the stored secret, as long as it still belongs to the same credentials: the same type,
the same username for basic, the same client_id and token_url for oauth2 (a client
secret is only ever sent to its token endpoint, so moving the token endpoint needs the
secret again). Messages name the part at fault and never quote a value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from yarl import URL

from webhookd import netguard
from webhookd.api.validate import Loc, Problems, string, unknown_fields
from webhookd.config import Config
from webhookd.signing import REDACTED
from webhookd.store.interface import Endpoint

NO_CONTROLS = r"^[^\x00-\x1f\x7f]*$"
SOME_NO_CONTROLS = r"^[^\x00-\x1f\x7f]+$"
# RFC 6749 3.3: scope tokens of %x21 / %x23-5B / %x5D-7E, one space between them.
SCOPE = r"^[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*$"


@dataclass(frozen=True)
class Part:
    """One string of an auth object: its bounds, its pattern (the same text serves
    Python's re and the OpenAPI document's ECMA regex) and what it is."""

    description: str
    max_len: int
    pattern: str = SOME_NO_CONTROLS
    expects: str = "no control characters"
    min_len: int = 1
    secret: bool = False
    optional: bool = False  # may be absent or null
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Searched, as JSON Schema does; Python's $ also matches before a final newline,
        # ECMA's does not, hence \Z.
        python = self.pattern[:-1] + r"\Z" if self.pattern.endswith("$") else self.pattern
        object.__setattr__(self, "regex", re.compile(python))


TYPES: dict[str, dict[str, Part]] = {
    "basic": {
        "username": Part(
            "The user name of HTTP Basic authentication (RFC 7617).",
            256,
            r"^[^:\x00-\x1f\x7f]+$",
            "no colon and no control characters",
        ),
        "password": Part(
            "The password (may be empty). Write-only: answers show [redacted], and sending "
            "[redacted] back keeps the stored password of the same username.",
            1024,
            NO_CONTROLS,
            min_len=0,
            secret=True,
        ),
    },
    "bearer": {
        "token": Part(
            "The token sent as Authorization: Bearer <token>. Write-only: answers show "
            "[redacted], and sending [redacted] back keeps the stored token.",
            4096,
            r"^[\x21-\x7e]+$",
            "visible ASCII characters without spaces",
            secret=True,
        ),
    },
    "oauth2": {
        "token_url": Part(
            "Where the client-credentials grant is POSTed (https unless the config allows "
            "http); it passes the same address checks as endpoint URLs.",
            2048,
            "^https?://",
            "an absolute http(s) URL",
        ),
        "client_id": Part("The OAuth 2.0 client id.", 256),
        "client_secret": Part(
            "The client secret, sent to token_url only (HTTP Basic, RFC 6749 2.3.1). "
            "Write-only: answers show [redacted], and sending [redacted] back keeps the "
            "stored secret of the same client_id and token_url.",
            1024,
            secret=True,
        ),
        "scope": Part(
            "Scopes to ask for, separated by single spaces; null or absent: none.",
            1024,
            SCOPE,
            "scope tokens separated by single spaces (RFC 6749 3.3)",
            optional=True,
        ),
        "audience": Part(
            "The audience parameter some token endpoints want; null or absent: none.",
            2048,
            optional=True,
        ),
    },
}
TYPE_TEXT = {
    "basic": "HTTP Basic authentication: Authorization: Basic base64(username:password).",
    "bearer": "A fixed bearer token: Authorization: Bearer <token>.",
    "oauth2": (
        "OAuth 2.0 client credentials (RFC 6749 4.4): a token is fetched from token_url, "
        "cached until shortly before it expires, fetched again once after a 401, and sent "
        "as Authorization: Bearer <token>."
    ),
}
# Whose secret a stored one is: [redacted] keeps it only while these stay the same.
OWNER_PARTS = {"basic": ("username",), "bearer": (), "oauth2": ("client_id", "token_url")}
DESCRIPTION = (
    "How webhookd authenticates to the receiver (basic, bearer or oauth2); null: not at all. "
    "Its Authorization header is then reserved: custom headers cannot set one."
)


def check_auth(
    value: Any, config: Config, current: Endpoint | None, problems: Problems
) -> dict[str, Any] | None:
    """The auth object as stored (secrets included, optional parts only when set), or
    None for null or when something is wrong (then `problems` says what)."""
    loc: Loc = ("body", "auth")
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.add(loc, 'expected null or an object such as {"type": "bearer", "token": "…"}')
        return None
    kind = value.get("type")
    if not isinstance(kind, str) or kind not in TYPES:
        problems.add((*loc, "type"), f"expected one of {', '.join(TYPES)}")
        return None
    start = len(problems.items)
    parts = TYPES[kind]
    unknown_fields(value, ("type", *parts), problems, loc)
    out: dict[str, Any] = {"type": kind}
    for name, part in parts.items():
        text = _part(value, name, part, (*loc, name), problems)
        if text is not None:
            out[name] = text
    if "token_url" in out and not _token_url_ok(out["token_url"], config, problems):
        return None
    if len(problems.items) > start:
        return None
    return _unredacted(out, current, problems)


def _part(value: dict[str, Any], name: str, part: Part, loc: Loc, problems: Problems) -> str | None:
    raw = value.get(name)
    if raw is None:
        if name in value and not part.optional:
            problems.add(loc, "expected a string")
        elif not part.optional:
            problems.add(loc, "field required")
        return None
    text = string(raw, loc, problems, max_len=part.max_len, min_len=part.min_len)
    if text is None:
        return None
    if not part.regex.search(text):
        problems.add(loc, f"expected {part.expects}")
        return None
    return text


def _token_url_ok(text: str, config: Config, problems: Problems) -> bool:
    """As endpoint URLs are checked: absolute http(s), https unless the config allows
    http, no credentials in it, and no IP address the address policy refuses (a name is
    checked when the token is fetched)."""
    loc = ("body", "auth", "token_url")
    try:
        url = URL(text)
    except (ValueError, TypeError):
        url = None
    if url is None or not url.host or any(c.isspace() for c in text):
        problems.add(loc, "expected an absolute URL such as https://auth.example.com/oauth/token")
        return False
    if url.user or url.password:
        problems.add(loc, "credentials in the URL are not allowed; use client_id and client_secret")
        return False
    if url.scheme == "http" and config.security.https_only:
        problems.add(
            loc, "https is required; set security.https_only: false in the config to allow http"
        )
        return False
    refused = netguard.refused_address(url.raw_host or "", config.security.allow_networks)
    if refused is not None:
        problems.add(loc, refused)
        return False
    return True


def _unredacted(
    out: dict[str, Any], current: Endpoint | None, problems: Problems
) -> dict[str, Any] | None:
    """`out` with each secret given as [redacted] replaced by the stored one."""
    kind = out["type"]
    stored = current.auth if current is not None else None
    for name, part in TYPES[kind].items():
        if not part.secret or out.get(name) != REDACTED:
            continue
        owners = OWNER_PARTS[kind]
        if (
            stored is None
            or stored.get("type") != kind
            or any(stored.get(o) != out.get(o) for o in owners)
            or not isinstance(stored.get(name), str)
        ):
            whose = f" for this {' and '.join(owners)}" if owners else ""
            problems.add(
                ("body", "auth", name),
                f"{REDACTED} stands for the stored {name}, and this endpoint has no {kind} "
                f"{name}{whose}; give the {name} itself",
            )
            return None
        out[name] = stored[name]
    return out


def check_header_clash(
    body: dict[str, Any], out: dict[str, Any], current: Endpoint | None, problems: Problems
) -> None:
    """With `auth` set, the Authorization header is webhookd's: custom headers cannot set
    one (whichever of the two the request changes)."""
    auth = out.get("auth") if "auth" in body else (current.auth if current else None)
    headers = out.get("headers") if "headers" in body else (current.headers if current else None)
    if not auth or not headers:
        return
    for name in headers:
        if name.lower() != "authorization":
            continue
        if "headers" in body:
            problems.add(
                ("body", "headers", name),
                f"{name} is set by webhookd from the endpoint's auth and cannot be overridden",
            )
        else:
            problems.add(
                ("body", "auth"),
                f"the endpoint's custom headers already set {name}; remove it from headers "
                "to use auth",
            )


def redacted(auth: dict[str, Any] | None) -> dict[str, Any] | None:
    """The auth object as answers show it: secrets as [redacted]."""
    if auth is None:
        return None
    parts = TYPES.get(str(auth.get("type")), {})
    return {k: REDACTED if k in parts and parts[k].secret else v for k, v in auth.items()}


# --- the OpenAPI document ------------------------------------------------------------


def openapi_schema(*, answer: bool) -> dict[str, Any]:
    """The field's schema in requests (answer=False) or in answers."""
    branches: list[dict[str, Any]] = []
    for kind, parts in TYPES.items():
        props: dict[str, Any] = {
            "type": {
                "type": "string",
                "const": kind,
                "description": f"The kind of authentication: {kind}.",
            },
        }
        for name, part in parts.items():
            props[name] = _part_schema(part, answer=answer)
        branches.append(
            {
                "type": "object",
                "properties": props,
                "required": ["type", *(n for n, p in parts.items() if not p.optional)],
                "additionalProperties": False,
                "description": TYPE_TEXT[kind],
            }
        )
    branches.append({"type": "null", "description": "No authentication."})
    return {"oneOf": branches, "description": DESCRIPTION}


def _part_schema(part: Part, *, answer: bool) -> dict[str, Any]:
    if answer and part.secret:
        return {"type": "string", "const": REDACTED, "description": part.description}
    out: dict[str, Any] = {
        "type": ["string", "null"] if part.optional and not answer else "string",
        "minLength": part.min_len,
        "maxLength": part.max_len,
        "pattern": part.pattern,
        "description": part.description,
    }
    if part.secret:
        out["writeOnly"] = True
    return out
