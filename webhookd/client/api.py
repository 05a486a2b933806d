"""The command line's side of the client: an AsyncClient made from `--url`/`--api-key`,
failures as one line with a hint for the command line, and running a command to its exit
code."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from webhookd.client.core import DEFAULT_URL, AsyncClient, WebhookdError

__all__ = ["DEFAULT_URL"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# The store's list, repeated: importing the store would load the database driver into
# every client command.
DELIVERY_STATES = ("pending", "delivering", "delivered", "failed", "skipped", "cancelled")
RELATIVE_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# What to do about a daemon that cannot be reached, in the command line's words.
HINTS = {
    "connection_refused": "is webhookd running there? start it with `webhookd serve`, or "
    "give its address with --url or WEBHOOKD_URL",
    "unknown_host": "check the host name in --url or WEBHOOKD_URL",
}

Api = AsyncClient
Action = Callable[[AsyncClient, argparse.Namespace], Awaitable[Any]]
Render = Callable[[Any, argparse.Namespace], str]


class ClientError(Exception):
    """A failure reported as one line, `webhookd: <message>`, with exit code 1."""


class UsageError(ClientError):
    """A command line that cannot be sent; exit code 2, like argparse's own errors."""


def client_for(args: argparse.Namespace, **options: Any) -> AsyncClient:
    """The client of `--url`/`--api-key`, falling back on WEBHOOKD_URL / WEBHOOKD_API_KEY."""
    try:
        url, key = getattr(args, "url", None), getattr(args, "api_key", None)
        return AsyncClient(url, api_key=key, **options)
    except ValueError as exc:
        raise UsageError(f"--url: {exc}") from None


def describe(exc: WebhookdError) -> str:
    """The one line the command line prints for a failure."""
    hint = HINTS.get(exc.code)
    return f"{exc.message} ({hint})" if hint else str(exc)


async def pages(api: AsyncClient, path: str, params: dict[str, Any], every: bool) -> Any:
    """One page as the API gave it, or (every=True) all pages merged as {"data": [...]}."""
    page = await api.request("GET", path, params=params)
    if not every:
        return page
    data = list(page["data"])
    while page.get("next_cursor"):
        page = await api.request("GET", path, params={**params, "cursor": page["next_cursor"]})
        data.extend(page["data"])
    return {"data": data}


# --- did you mean -------------------------------------------------------------------------


def _named_types(args: argparse.Namespace) -> list[str]:
    """The event-type names a command line gave (a publish's type, --event-type, --events)."""
    names = [getattr(args, "type", None), getattr(args, "event_type", None)]
    names.extend(getattr(args, "events", None) or [])
    return [n for n in names if isinstance(n, str) and n and "*" not in n]


async def type_hint(api: AsyncClient, exc: WebhookdError, args: argparse.Namespace) -> str:
    """`did you mean order.created?` for an unknown event type in a 422, or ""."""
    if exc.status != 422 or "event type" not in exc.message:
        return ""
    try:
        catalog = [t["name"] for t in await api.list_event_types()]
    except WebhookdError:
        return ""
    hints = []
    for name in _named_types(args):
        if name in catalog:
            continue
        close = difflib.get_close_matches(name, catalog, n=3, cutoff=0.8)
        if close:
            hints.append(f"{' or '.join(close)} for {name}")
    return f"did you mean {', '.join(hints)}?" if hints else ""


# --- running a command --------------------------------------------------------------------


def emit(text: str, stream: Any = None) -> None:
    out = stream or sys.stdout
    try:
        print(text, file=out, flush=True)
    except BrokenPipeError:
        # The reader (`| head`) went away; say nothing more and exit quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())


async def _with_api(action: Action, args: argparse.Namespace) -> Any:
    async with client_for(args) as api:
        try:
            return await action(api, args)
        except WebhookdError as exc:
            hint = await type_hint(api, exc, args)
            raise ClientError(f"{describe(exc)}; {hint}" if hint else describe(exc)) from None


def run_command(action: Action, render: Render, args: argparse.Namespace) -> int:
    try:
        doc = asyncio.run(_with_api(action, args))
    except UsageError as exc:
        emit(f"webhookd: {exc}", sys.stderr)
        return EXIT_USAGE
    except ClientError as exc:
        emit(f"webhookd: {exc}", sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if getattr(args, "json", False):
        if doc is not None:
            emit(json.dumps(doc, indent=2, ensure_ascii=False))
        return EXIT_OK
    emit(render(doc, args))
    if isinstance(doc, dict) and doc.get("next_cursor"):
        emit(f"(more: add --all, or --cursor {doc['next_cursor']})", sys.stderr)
    return EXIT_OK
