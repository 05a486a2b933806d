"""Talking to a running daemon: where it is, one aiohttp session per command, errors as
one line, and running a command to its exit code."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from webhookd import __version__

if TYPE_CHECKING:
    import aiohttp

DEFAULT_URL = "http://127.0.0.1:8080"
TIMEOUT_S = 60
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# The store's list, repeated: importing the store would load the database driver into
# every client command.
DELIVERY_STATES = ("pending", "delivering", "delivered", "failed", "skipped", "cancelled")
RELATIVE_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


Action = Callable[["Api", argparse.Namespace], Awaitable[Any]]
Render = Callable[[Any, argparse.Namespace], str]


class ClientError(Exception):
    """A failure reported as one line, `webhookd: <message>`, with exit code 1."""


class UsageError(ClientError):
    """A command line that cannot be sent; exit code 2, like argparse's own errors."""


# --- talking to the API -------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where the API is: `shown` in messages, `base` for request URLs."""

    shown: str
    base: str
    unix_path: str | None
    api_key: str | None


def target(args: argparse.Namespace) -> Target:
    """The API address and key: flags first, then WEBHOOKD_URL / WEBHOOKD_API_KEY."""
    raw = getattr(args, "url", None) or os.environ.get("WEBHOOKD_URL") or DEFAULT_URL
    key = getattr(args, "api_key", None) or os.environ.get("WEBHOOKD_API_KEY") or None
    raw = raw.strip().rstrip("/")
    if raw.startswith("unix:"):
        return Target(raw, "http://localhost", raw[len("unix:") :], key)
    if "://" not in raw:
        raw = f"http://{raw}"
    if not raw.startswith(("http://", "https://")):
        raise UsageError(f"--url: expected http(s)://host:port or unix:/path, got {raw!r}")
    return Target(raw, raw, None, key)


def _reason(err: OSError) -> str:
    if isinstance(err, socket.gaierror):
        return f"host name not found ({err.strerror})"
    if err.errno:
        return os.strerror(err.errno).lower()
    return str(err) or type(err).__name__


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def api_error(status: int, raw: bytes, retry_after: str | None) -> str:
    """One line for an error answer: `404 not_found: no endpoint with id ep_x`."""
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or "error" not in doc:
        text = raw.decode("utf-8", errors="replace").strip()
        return _one_line(f"{status} from the server: {text}" if text else f"HTTP {status}")
    message = str(doc.get("message", ""))
    line = f"{status} {doc['error']}: {message}"
    detail = doc.get("detail")
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        loc = [str(p) for p in detail[0].get("loc", [])]
        if loc and ".".join(loc[1:]) not in message:
            line += f" (at {'.'.join(loc)})"
    if retry_after:
        line += f" (retry after {retry_after} s)"
    return _one_line(line)


def _query(params: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        if value is None:
            continue
        out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


class Api:
    """JSON calls to the daemon; errors come out as ClientError with one line."""

    def __init__(self, where: Target, session: aiohttp.ClientSession) -> None:
        self._where = where
        self._session = session

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        import aiohttp

        headers = {"Accept": "application/json", "User-Agent": f"webhookd-cli/{__version__}"}
        if self._where.api_key:
            headers["Authorization"] = f"Bearer {self._where.api_key}"
        data = None
        if body is not None:
            data = json.dumps(body, ensure_ascii=False).encode()
            headers["Content-Type"] = "application/json"
        url = self._where.base + path
        try:
            async with self._session.request(
                method, url, params=_query(params or {}), data=data, headers=headers
            ) as resp:
                raw = await resp.read()
                status, retry_after = resp.status, resp.headers.get("Retry-After")
        except aiohttp.ClientConnectorError as exc:
            raise ClientError(
                f"cannot reach {self._where.shown}: {_reason(exc.os_error)}"
            ) from None
        except TimeoutError:
            raise ClientError(f"{self._where.shown} did not answer within {TIMEOUT_S} s") from None
        except aiohttp.ClientError as exc:
            reason = str(exc) or type(exc).__name__
            raise ClientError(f"cannot talk to {self._where.shown}: {reason}") from None
        if status >= 400:
            raise ClientError(api_error(status, raw, retry_after))
        return self._parse(status, raw)

    def _parse(self, status: int, raw: bytes) -> Any:
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ClientError(
                f"{self._where.shown} answered {status} with something that is not JSON; "
                "is --url the webhookd API?"
            ) from None


async def _with_api(action: Action, args: argparse.Namespace) -> Any:
    import aiohttp

    where = target(args)
    connector: aiohttp.BaseConnector = (
        aiohttp.UnixConnector(path=where.unix_path) if where.unix_path else aiohttp.TCPConnector()
    )
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        return await action(Api(where, session), args)


async def pages(api: Api, path: str, params: dict[str, Any], every: bool) -> Any:
    """One page as the API gave it, or (every=True) all pages merged as {"data": [...]}."""
    page = await api.call("GET", path, params=params)
    if not every:
        return page
    data = list(page["data"])
    while page.get("next_cursor"):
        page = await api.call("GET", path, params={**params, "cursor": page["next_cursor"]})
        data.extend(page["data"])
    return {"data": data}


# --- running a command --------------------------------------------------------------------


def emit(text: str, stream: Any = None) -> None:
    out = stream or sys.stdout
    try:
        print(text, file=out, flush=True)
    except BrokenPipeError:
        # The reader (`| head`) went away; say nothing more and exit quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())


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
