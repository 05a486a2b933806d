"""The `endpoints create|update` options that set an endpoint's receiver authentication
(the `auth` field): --auth-basic, --auth-bearer, --auth-oauth2 with its client options,
--auth JSON for the whole object, and --no-auth on update.

Error messages never quote what was given: it may be a password.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from webhookd.client.api import UsageError

UNSET: Any = object()
OAUTH2_PARTS = {
    "auth_client_id": "client_id",
    "auth_client_secret": "client_secret",
    "auth_scope": "scope",
    "auth_audience": "audience",
}


def _basic_pair(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise argparse.ArgumentTypeError("expected USER:PASSWORD (the user name cannot hold a ':')")
    return user, password


def _auth_json(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            'expected a JSON object such as {"type": "bearer", "token": "…"}'
        ) from None
    if value is not None and not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object (or null)")
    return value


def add_auth_options(p: argparse.ArgumentParser, *, creating: bool) -> None:
    g = p.add_argument_group(
        "receiver authentication",
        "how webhookd authenticates to the endpoint (secrets are write-only: answers show "
        "[redacted]; on update, [redacted] as a secret keeps the stored one)",
    )
    one = g.add_mutually_exclusive_group()
    one.add_argument(
        "--auth-basic",
        type=_basic_pair,
        metavar="USER:PASSWORD",
        help="HTTP Basic authentication",
    )
    one.add_argument("--auth-bearer", metavar="TOKEN", help="Authorization: Bearer TOKEN")
    one.add_argument(
        "--auth-oauth2",
        metavar="TOKEN_URL",
        help="OAuth 2.0 client credentials: tokens from TOKEN_URL (with --auth-client-id and "
        "--auth-client-secret)",
    )
    one.add_argument(
        "--auth",
        dest="auth_json",
        type=_auth_json,
        default=UNSET,
        metavar="JSON",
        help="the auth object as JSON (null: none)",
    )
    if not creating:
        one.add_argument("--no-auth", action="store_true", help="stop authenticating")
    g.add_argument("--auth-client-id", metavar="ID", help="the OAuth 2.0 client id")
    g.add_argument("--auth-client-secret", metavar="SECRET", help="the OAuth 2.0 client secret")
    g.add_argument("--auth-scope", metavar="SCOPES", help="scopes to ask for, space-separated")
    g.add_argument("--auth-audience", metavar="AUDIENCE", help="the audience to ask for")


def auth_field(args: argparse.Namespace) -> Any:
    """The `auth` value the options give, or UNSET when they give none."""
    oauth2 = {part: getattr(args, dest) for dest, part in OAUTH2_PARTS.items()}
    oauth2 = {k: v for k, v in oauth2.items() if v is not None}
    if oauth2 and not args.auth_oauth2:
        raise UsageError(f"--auth-{next(iter(oauth2)).replace('_', '-')} goes with --auth-oauth2")
    if args.auth_basic is not None:
        user, password = args.auth_basic
        return {"type": "basic", "username": user, "password": password}
    if args.auth_bearer is not None:
        return {"type": "bearer", "token": args.auth_bearer}
    if args.auth_oauth2 is not None:
        return {"type": "oauth2", "token_url": args.auth_oauth2, **oauth2}
    if args.auth_json is not UNSET:
        return args.auth_json
    if getattr(args, "no_auth", False):
        return None
    return UNSET
