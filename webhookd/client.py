"""The operator commands that talk to a running daemon over its API.

`webhookd endpoints|events|deliveries|event-types …`: this module owns their arguments,
the HTTP calls (one aiohttp session per command, TCP or a unix socket), the readable
tables and key/value views, `--json` output for scripts, and the rule that every failure
is one line on stderr: API and connection errors exit 1, bad usage exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from webhookd import __version__
from webhookd.formats import FORMATS
from webhookd.signing import SCHEMES

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


def _emit(text: str, stream: Any = None) -> None:
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
        _emit(f"webhookd: {exc}", sys.stderr)
        return EXIT_USAGE
    except ClientError as exc:
        _emit(f"webhookd: {exc}", sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if getattr(args, "json", False):
        if doc is not None:
            _emit(json.dumps(doc, indent=2, ensure_ascii=False))
        return EXIT_OK
    _emit(render(doc, args))
    if isinstance(doc, dict) and doc.get("next_cursor"):
        _emit(f"(more: add --all, or --cursor {doc['next_cursor']})", sys.stderr)
    return EXIT_OK


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
        return "yes"
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
    ("DESCRIPTION", _get("description"), 60),
]


def render_list(columns: Sequence[Column], empty: str) -> Render:
    return lambda doc, _args: table(doc["data"], columns, empty)


def render_endpoint(doc: Any, _args: argparse.Namespace) -> str:
    return keyvalues(doc)


def render_event(doc: Any, _args: argparse.Namespace) -> str:
    payload = json.dumps(doc.get("payload"), indent=2, ensure_ascii=False)
    deliveries = table(doc.get("deliveries", []), EVENT_DELIVERY_COLUMNS, "  (none)")
    return (
        f"{keyvalues(doc, skip=('payload', 'deliveries'))}\n\n"
        f"payload:\n{payload}\n\ndeliveries:\n{deliveries}"
    )


def render_delivery(doc: Any, _args: argparse.Namespace) -> str:
    attempts = table(doc.get("attempts", []), ATTEMPT_COLUMNS, "  (no attempts yet)")
    return f"{keyvalues(doc, skip=('attempts',))}\n\nattempts:\n{attempts}"


def render_secret(doc: Any, _args: argparse.Namespace) -> str:
    lines = [f"secret: {doc['secret']}"]
    for old in doc.get("previous_secrets", []):
        lines.append(f"previous secret still valid until {old.get('expires_at')}")
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
    return (
        f"new secret: {doc['secret']}\n"
        f"the previous secret also signs deliveries for {grace:g} s more"
    )


def render_published(doc: Any, _args: argparse.Namespace) -> str:
    n = doc["deliveries"]
    return f"published {doc['id']} ({doc['type']}) to {n} endpoint{'' if n == 1 else 's'}"


def render_requeued(doc: Any, _args: argparse.Namespace) -> str:
    n = doc["requeued"]
    return f"requeued {n} deliver{'y' if n == 1 else 'ies'}"


def message(template: str) -> Render:
    """A render that formats `template` with the answer's fields and the arguments."""
    return lambda doc, args: template.format(
        doc=doc if isinstance(doc, dict) else {}, args=vars(args)
    )


# --- argument types -----------------------------------------------------------------------


def flag_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def comma_list(text: str) -> list[str]:
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def body_format(text: str) -> str | list[str]:
    items = comma_list(text)
    for item in items:
        if item not in FORMATS:
            raise argparse.ArgumentTypeError(f"expected {', '.join(FORMATS)}, got {item!r}")
    return items[0] if len(items) == 1 else items


def optional_number(text: str) -> float | str:
    """A number, or "none" to clear the setting."""
    if text.lower() == "none":
        return "none"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or none, got {text!r}") from None


def optional_int(text: str) -> int | str:
    """An integer, or "none" to go back to the default."""
    if text.lower() == "none":
        return "none"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or none, got {text!r}") from None


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('expected a JSON object, e.g. {"order_id": 1}')
    return value


def json_file(path: str) -> dict[str, Any]:
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc.strerror}") from None
    return json_object(text)


def _relative(text: str, sign: int) -> str:
    match = RELATIVE_RE.fullmatch(text.strip())
    if match is None:
        return text
    delta = timedelta(seconds=float(match.group(1)) * UNIT_S[match.group(2)])
    return (datetime.now(UTC) + sign * delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def ago(text: str) -> str:
    """An RFC 3339 time as given, or `30s`, `15m`, `2h`, `7d` before now."""
    return _relative(text, -1)


def from_now(text: str) -> str:
    """An RFC 3339 time as given, or `30s`, `15m`, `2h`, `7d` after now."""
    return _relative(text, 1)


# --- the commands -------------------------------------------------------------------------


def list_action(path: str, filters: Mapping[str, str]) -> Action:
    """GET a list with `filters` (argument name -> query parameter), --limit, --cursor, --all."""

    async def action(api: Api, args: argparse.Namespace) -> Any:
        params = {query: getattr(args, dest) for dest, query in filters.items()}
        params.update(limit=args.limit, cursor=args.cursor)
        return await pages(api, path, params, args.all)

    return action


def _path(template: str, args: argparse.Namespace) -> str:
    values = {k: quote(str(getattr(args, k)), safe="") for k in ("id", "name") if k in args}
    return template.format(**values)


def call_action(
    method: str, template: str, body: Callable[[argparse.Namespace], Any] | None = None
) -> Action:
    """One call to `template` (its {id} or {name} filled from the arguments) with a body."""

    async def action(api: Api, args: argparse.Namespace) -> Any:
        payload = body(args) if body is not None else None
        return await api.call(method, _path(template, args), body=payload)

    return action


ENDPOINT_FIELDS = {
    "target_url": "url",
    "events": "events",
    "tenant": "tenant",
    "description": "description",
    "secret": "secret",
    "format": "format",
    "delay_s": "delay_s",
    "rate_limit": "rate_limit_per_s",
    "max_in_flight": "max_in_flight",
    "ordered": "ordered",
    "active": "active",
}


def endpoint_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for dest, field in ENDPOINT_FIELDS.items():
        value = getattr(args, dest, None)
        if value is not None:
            body[field] = None if value == "none" else value
    if args.scheme:
        body["signature"] = {"scheme": args.scheme}
    if args.header:
        body["headers"] = dict(args.header)
    if args.metadata:
        body["metadata"] = dict(args.metadata)
    return body


def update_body(args: argparse.Namespace) -> dict[str, Any]:
    body = endpoint_body(args)
    if not body:
        raise UsageError("nothing to update; give at least one option (see --help)")
    return body


def _given(pairs: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in pairs.items() if value is not None}


def test_body(args: argparse.Namespace) -> dict[str, Any]:
    return _given({"event_type": args.event_type, "payload": args.payload})


def recover_body(args: argparse.Namespace) -> dict[str, Any]:
    return _given({"since": args.since, "until": args.until})


def rotate_body(args: argparse.Namespace) -> dict[str, Any]:
    return _given({"secret": args.secret, "grace_s": args.grace_s})


def publish_body(args: argparse.Namespace) -> dict[str, Any]:
    payload = args.payload if args.payload is not None else args.payload_file
    return _given(
        {
            "type": args.type,
            "payload": payload if payload is not None else {},
            "tenant": args.tenant,
            "id": args.id,
            "deliver_at": args.deliver_at,
        }
    )


def event_type_body(args: argparse.Namespace) -> dict[str, Any]:
    return {"name": args.name, "description": args.description}


# --- the parsers --------------------------------------------------------------------------

Subparsers = argparse._SubParsersAction  # the type argparse gives add_subparsers()


def common_options() -> argparse.ArgumentParser:
    """--url, --api-key, --json; SUPPRESS keeps a leaf from erasing its group's values."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection and output")
    g.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help=f"the daemon's API, http://host:port or unix:/path "
        f"(env WEBHOOKD_URL, default {DEFAULT_URL})",
    )
    g.add_argument(
        "--api-key", default=argparse.SUPPRESS, help="the API key (env WEBHOOKD_API_KEY)"
    )
    g.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the API's JSON instead of a table",
    )
    return p


def _group(
    sub: Subparsers[argparse.ArgumentParser],
    name: str,
    help_text: str,
    common: argparse.ArgumentParser,
) -> Subparsers[argparse.ArgumentParser]:
    p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
    return p.add_subparsers(dest="action", metavar="ACTION", required=True)


def _leaf(
    group: Subparsers[argparse.ArgumentParser],
    name: str,
    help_text: str,
    common: argparse.ArgumentParser,
    action: Action,
    render: Render,
) -> argparse.ArgumentParser:
    p = group.add_parser(name, help=help_text, description=help_text, parents=[common])
    p.set_defaults(func=partial(run_command, action, render))
    return p


def _paging(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, help="rows per page, 1-250 (default 50)")
    p.add_argument("--cursor", help="continue from a previous page's next_cursor")
    p.add_argument("--all", action="store_true", help="follow next_cursor through every page")


def _endpoint_options(p: argparse.ArgumentParser, *, creating: bool) -> None:
    if creating:
        p.add_argument("target_url", metavar="URL", help="where deliveries are POSTed")
        p.add_argument("--secret", help="signing secret (default: a generated whsec_ secret)")
    else:
        p.add_argument("id", help="endpoint id (ep_…)")
        p.add_argument("--target-url", metavar="URL", help="a new URL to deliver to")
        p.add_argument("--active", type=flag_bool, metavar="true|false", help="enable or disable")
    p.add_argument("--events", type=comma_list, metavar="A,B", help="types or patterns (call.*)")
    p.add_argument("--tenant", help="the customer account the endpoint belongs to")
    p.add_argument("--description", help="free text")
    p.add_argument("--scheme", choices=SCHEMES, help="signature scheme (default standard)")
    p.add_argument(
        "--format", type=body_format, metavar="F[,F]", help="json, form, multipart or a chain"
    )
    p.add_argument(
        "--header",
        type=key_value,
        action="append",
        metavar="K=V",
        help="extra request header (repeat; on update replaces them all)",
    )
    p.add_argument(
        "--metadata", type=key_value, action="append", metavar="K=V", help="metadata (repeat)"
    )
    p.add_argument("--delay-s", type=float, metavar="N", help="hold deliveries N s first")
    p.add_argument(
        "--rate-limit", type=optional_number, metavar="N|none", help="attempts per second"
    )
    p.add_argument(
        "--max-in-flight", type=optional_int, metavar="N|none", help="open requests at once"
    )
    p.add_argument(
        "--ordered",
        action=argparse.BooleanOptionalAction,
        help="deliver one at a time in publish order",
    )


def _add_endpoints(sub: Subparsers[argparse.ArgumentParser], co: argparse.ArgumentParser) -> None:
    g = _group(sub, "endpoints", "manage endpoints (where events are delivered)", co)
    p = _leaf(
        g,
        "list",
        "list endpoints, newest first",
        co,
        list_action("/v1/endpoints", {"tenant": "tenant", "active": "active"}),
        render_list(ENDPOINT_COLUMNS, "no endpoints"),
    )
    p.add_argument("--tenant", help="only this tenant's endpoints")
    p.add_argument("--active", type=flag_bool, metavar="true|false", help="only (in)active ones")
    _paging(p)
    p = _leaf(
        g,
        "show",
        "show one endpoint",
        co,
        call_action("GET", "/v1/endpoints/{id}"),
        render_endpoint,
    )
    p.add_argument("id", help="endpoint id (ep_…)")
    p = _leaf(
        g,
        "create",
        "create an endpoint (prints its secret)",
        co,
        call_action("POST", "/v1/endpoints", endpoint_body),
        render_endpoint,
    )
    _endpoint_options(p, creating=True)
    p = _leaf(
        g,
        "update",
        "change an endpoint's settings",
        co,
        call_action("PATCH", "/v1/endpoints/{id}", update_body),
        render_endpoint,
    )
    _endpoint_options(p, creating=False)
    p = _leaf(
        g,
        "delete",
        "delete an endpoint (its undelivered deliveries are cancelled)",
        co,
        call_action("DELETE", "/v1/endpoints/{id}"),
        message("deleted endpoint {args[id]}"),
    )
    p.add_argument("id", help="endpoint id (ep_…)")
    _add_endpoint_operations(g, co)


def _add_endpoint_operations(
    g: Subparsers[argparse.ArgumentParser], co: argparse.ArgumentParser
) -> None:
    p = _leaf(
        g,
        "test",
        "send one test event to this endpoint only",
        co,
        call_action("POST", "/v1/endpoints/{id}/test", test_body),
        message("sent test event {doc[event_id]} as delivery {doc[delivery_id]}"),
    )
    p.add_argument("id", help="endpoint id (ep_…)")
    p.add_argument("--event-type", help="event type to send (default webhookd.test)")
    p.add_argument("--payload", type=json_object, metavar="JSON", help="the payload object")
    p = _leaf(
        g,
        "recover",
        "put failed and skipped deliveries of a time window back to pending",
        co,
        call_action("POST", "/v1/endpoints/{id}/recover", recover_body),
        render_requeued,
    )
    p.add_argument("id", help="endpoint id (ep_…)")
    p.add_argument("--since", type=ago, required=True, metavar="TIME", help="RFC 3339 or 2h, 7d")
    p.add_argument("--until", type=ago, metavar="TIME", help="RFC 3339 or 30m (default now)")
    p = _leaf(
        g,
        "rotate-secret",
        "replace the signing secret; the old one keeps signing during a grace period",
        co,
        call_action("POST", "/v1/endpoints/{id}/secret/rotate", rotate_body),
        render_rotated,
    )
    p.add_argument("id", help="endpoint id (ep_…)")
    p.add_argument("--secret", help="the new secret (default: a generated one)")
    p.add_argument("--grace-s", type=float, metavar="N", help="grace period (default 86400)")
    for name, path, help_text, render in (
        ("secret", "secret", "show the signing secret", render_secret),
        ("stats", "stats", "delivery counts and success rate", render_stats),
    ):
        p = _leaf(
            g, name, help_text, co, call_action("GET", f"/v1/endpoints/{{id}}/{path}"), render
        )
        p.add_argument("id", help="endpoint id (ep_…)")


def _add_events(sub: Subparsers[argparse.ArgumentParser], co: argparse.ArgumentParser) -> None:
    g = _group(sub, "events", "publish and inspect events", co)
    p = _leaf(
        g,
        "list",
        "list events, newest first",
        co,
        list_action(
            "/v1/events", {"type": "type", "tenant": "tenant", "since": "since", "until": "until"}
        ),
        render_list(EVENT_COLUMNS, "no events"),
    )
    p.add_argument("--type", help="only events of this type")
    p.add_argument("--tenant", help="only this tenant's events")
    p.add_argument("--since", type=ago, metavar="TIME", help="RFC 3339 or 2h, 7d")
    p.add_argument("--until", type=ago, metavar="TIME", help="RFC 3339 or 30m")
    _paging(p)
    p = _leaf(
        g,
        "show",
        "show one event, its payload and its deliveries",
        co,
        call_action("GET", "/v1/events/{id}"),
        render_event,
    )
    p.add_argument("id", help="event id (evt_…)")
    p = _leaf(
        g,
        "publish",
        "publish an event to every subscribed endpoint",
        co,
        call_action("POST", "/v1/events", publish_body),
        render_published,
    )
    p.add_argument("type", help="event type, e.g. order.created")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--payload", type=json_object, metavar="JSON", help="the payload object")
    source.add_argument(
        "--payload-file", type=json_file, metavar="FILE", help="read the payload (- for stdin)"
    )
    p.add_argument("--tenant", help="publish to this tenant's endpoints")
    p.add_argument("--id", help="your own event id: publishing it again changes nothing")
    p.add_argument("--deliver-at", type=from_now, metavar="TIME", help="RFC 3339 or 10m, 1h")


def _add_deliveries(sub: Subparsers[argparse.ArgumentParser], co: argparse.ArgumentParser) -> None:
    g = _group(sub, "deliveries", "inspect and retry deliveries", co)
    filters = ("endpoint_id", "event_id", "event_type", "status", "since", "until")
    p = _leaf(
        g,
        "list",
        "list deliveries, newest first",
        co,
        list_action("/v1/deliveries", {name: name for name in filters}),
        render_list(DELIVERY_COLUMNS, "no deliveries"),
    )
    p.add_argument("--endpoint-id", help="only deliveries to this endpoint")
    p.add_argument("--event-id", help="only deliveries of this event")
    p.add_argument("--event-type", help="only deliveries of events of this type")
    p.add_argument("--status", choices=DELIVERY_STATES, help="only deliveries in this state")
    p.add_argument("--since", type=ago, metavar="TIME", help="RFC 3339 or 2h, 7d")
    p.add_argument("--until", type=ago, metavar="TIME", help="RFC 3339 or 30m")
    _paging(p)
    p = _leaf(
        g,
        "show",
        "show one delivery and every attempt",
        co,
        call_action("GET", "/v1/deliveries/{id}"),
        render_delivery,
    )
    p.add_argument("id", help="delivery id (dlv_…)")
    p = _leaf(
        g,
        "retry",
        "attempt a delivery again now, whatever its state",
        co,
        call_action("POST", "/v1/deliveries/{id}/retry"),
        message("queued {doc[id]} for an attempt now"),
    )
    p.add_argument("id", help="delivery id (dlv_…)")


def _add_event_types(sub: Subparsers[argparse.ArgumentParser], co: argparse.ArgumentParser) -> None:
    g = _group(sub, "event-types", "manage the event-type catalog", co)
    _leaf(
        g,
        "list",
        "list event types",
        co,
        call_action("GET", "/v1/event-types"),
        render_list(EVENT_TYPE_COLUMNS, "no event types"),
    )
    p = _leaf(
        g,
        "create",
        "add an event type",
        co,
        call_action("POST", "/v1/event-types", event_type_body),
        message("created event type {doc[name]}"),
    )
    p.add_argument("name", help="dot-separated name, e.g. order.created")
    p.add_argument("--description", default="", help="what the event means")
    p = _leaf(
        g,
        "delete",
        "remove an event type",
        co,
        call_action("DELETE", "/v1/event-types/{name}"),
        message("deleted event type {args[name]}"),
    )
    p.add_argument("name", help="the event type's name")


def add_client_commands(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Register `endpoints`, `events`, `deliveries` and `event-types` on the main parser."""
    common = common_options()
    _add_endpoints(sub, common)
    _add_events(sub, common)
    _add_deliveries(sub, common)
    _add_event_types(sub, common)


# --- healthcheck ----------------------------------------------------------------------------


def _health_target(args: argparse.Namespace) -> None:
    """With -c FILE and no --url, ask the daemon at the config's listen address."""
    if getattr(args, "url", None) or not getattr(args, "config", None):
        return
    from webhookd.config import ConfigError, load_config

    try:
        address = load_config(args.config).listen_address
    except ConfigError as exc:
        raise UsageError(f"{args.config}: {exc.problems[0]}") from None
    if address.unix_path is not None:
        args.url = f"unix:{address.unix_path}"
    else:
        host = address.host or "127.0.0.1"
        if host in ("0.0.0.0", "::"):  # noqa: S104 - a wildcard listens on loopback too
            host = "127.0.0.1"
        args.url = (
            f"http://[{host}]:{address.port}" if ":" in host else f"http://{host}:{address.port}"
        )


async def _readyz(api: Api, args: argparse.Namespace) -> Any:
    return await api.call("GET", "/readyz")


def cmd_healthcheck(args: argparse.Namespace) -> int:
    try:
        _health_target(args)
    except UsageError as exc:
        _emit(f"webhookd: {exc}", sys.stderr)
        return EXIT_ERROR
    return run_command(_readyz, lambda doc, _a: f"ready: {doc.get('status', 'ready')}", args)


def add_healthcheck(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "healthcheck",
        parents=[common_options()],
        help="exit 0 if the daemon is ready (GET /readyz), 1 if not",
    )
    p.add_argument("-c", "--config", help="find the daemon at this config's listen address")
    p.set_defaults(func=cmd_healthcheck)
