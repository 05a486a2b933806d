"""The client commands and their parsers: `webhookd endpoints|events|deliveries|event-types`
and `webhookd healthcheck`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from webhookd.client import auth_options
from webhookd.client.api import (
    DEFAULT_URL,
    DELIVERY_STATES,
    EXIT_ERROR,
    EXIT_OK,
    Action,
    Api,
    ClientError,
    Render,
    UsageError,
    client_for,
    describe,
    emit,
    pages,
    run_command,
)
from webhookd.client.args import (
    ago,
    body_format,
    comma_list,
    flag_bool,
    from_now,
    json_file,
    json_object,
    key_value,
    optional_int,
    optional_number,
    text_file,
)
from webhookd.client.core import WebhookdError
from webhookd.client.routing_options import (
    add_endpoint_options,
    add_event_options,
    endpoint_fields,
)
from webhookd.client.views import (
    DELIVERY_COLUMNS,
    ENDPOINT_COLUMNS,
    EVENT_COLUMNS,
    EVENT_TYPE_COLUMNS,
    message,
    render_delivery,
    render_endpoint,
    render_event,
    render_event_type,
    render_list,
    render_published,
    render_requeued,
    render_retried,
    render_rotated,
    render_secret,
    render_stats,
)
from webhookd.signing import ALGORITHMS, SCHEMES

if TYPE_CHECKING:
    pass

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
        return await api.request(method, _path(template, args), body=payload)

    return action


async def erase_payload(api: Api, args: argparse.Namespace) -> Any:
    """DELETE /v1/events/{id}/payload, with ?tenant= when one is given."""
    await api.erase_payload(args.id, tenant=args.tenant)
    return {}


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
    "paused": "paused",
    "active": "active",
    "proxy": "proxy",
}
TLS_OPTIONS = {"tls_client_cert": "client_cert", "tls_client_key": "client_key", "tls_ca": "ca"}


def endpoint_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for dest, field in ENDPOINT_FIELDS.items():
        value = getattr(args, dest, None)
        if value is not None:
            body[field] = None if value == "none" else value
    if args.scheme or args.algorithm:
        body["signature"] = {"scheme": args.scheme or "standard"}
        if args.algorithm:
            body["signature"]["algorithm"] = args.algorithm
    if args.header:
        body["headers"] = dict(args.header)
    if args.metadata:
        body["metadata"] = dict(args.metadata)
    tls = {part: getattr(args, dest) for dest, part in TLS_OPTIONS.items() if getattr(args, dest)}
    if tls:
        body["tls"] = tls
    elif getattr(args, "no_tls", False):
        body["tls"] = None
    body.update(endpoint_fields(args))
    if (auth := auth_options.auth_field(args)) is not auth_options.UNSET:
        body["auth"] = auth
    return body


def create_body(args: argparse.Namespace) -> dict[str, Any]:
    if not args.target_url:
        raise UsageError(
            "endpoints create: give the endpoint's URL first, as in `webhookd endpoints create "
            "https://example.com/webhooks` (--url is the address of the webhookd daemon)"
        )
    return endpoint_body(args)


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
    return _given({"secret": args.secret, "grace_s": args.grace_s, "algorithm": args.algorithm})


def publish_body(args: argparse.Namespace) -> dict[str, Any]:
    payload = args.payload if args.payload is not None else args.payload_file
    return _given(
        {
            "type": args.type,
            "payload": payload if payload is not None else {},
            "tenant": args.tenant,
            "id": args.id,
            "deliver_at": args.deliver_at,
            "channels": args.channel,
        }
    )


def event_type_body(args: argparse.Namespace) -> dict[str, Any]:
    body = {"name": args.name, "description": args.description}
    return {**body, **_given({"schema": args.schema, "example": args.example})}


def event_type_update_body(args: argparse.Namespace) -> dict[str, Any]:
    given = _given(
        {"description": args.description, "schema": args.schema, "example": args.example}
    )
    body = {key: None if value == "none" else value for key, value in given.items()}
    if not body:
        raise UsageError("nothing to update; give --description, --schema or --example")
    return body


def _json_file_or_none(path: str) -> dict[str, Any] | str:
    """A JSON object file (or - for stdin), or "none" to remove the value."""
    return "none" if path.lower() == "none" else json_file(path)


# Retries sent at once by `endpoints retry-now`: enough to go fast, few enough that a
# large backlog does not crowd out the daemon's other API clients.
RETRY_NOW_AT_ONCE = 8


async def retry_now(api: Api, args: argparse.Namespace) -> dict[str, Any]:
    """Every delivery of the endpoint that is pending now, attempted now: listed first,
    then `POST /v1/deliveries/{id}/retry` for each, a few at a time. A manual attempt that
    fails keeps the delivery's place in its retry schedule. Those that moved on meanwhile
    (delivered, being attempted) are counted apart."""
    ep = await api.get_endpoint(args.id)
    if ep.get("paused"):
        raise ClientError(
            f"endpoint {args.id} is paused; resume it first "
            f"(`webhookd endpoints resume {args.id}`), and what it held goes at once"
        )
    listed = await pages(
        api, "/v1/deliveries", {"endpoint_id": args.id, "status": "pending", "limit": 250}, True
    )
    ids = iter([d["id"] for d in listed["data"]])

    async def worker() -> int:
        done = 0
        for delivery_id in ids:  # shared: each id is taken by one worker
            try:
                await api.retry_delivery(delivery_id)
            except WebhookdError as exc:
                if exc.status != 409:
                    raise
                continue  # no longer pending (an attempt in progress, say)
            done += 1
        return done

    counts = await asyncio.gather(*(worker() for _ in range(RETRY_NOW_AT_ONCE)))
    return {"endpoint_id": args.id, "pending": len(listed["data"]), "retried": sum(counts)}


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
        # Optional for argparse so that a missing URL gets a message that tells it apart
        # from --url, the daemon's address (see endpoint_body).
        p.add_argument("target_url", metavar="URL", nargs="?", help="where deliveries are POSTed")
        p.add_argument(
            "--secret",
            help="signing secret (default: a generated whsec_ secret, or a whsk_ key with "
            "--algorithm ed25519)",
        )
    else:
        p.add_argument("id", help="endpoint id (ep_…)")
        p.add_argument("--target", dest="target_url", metavar="URL", help="a new URL to deliver to")
        # The old name, kept working for scripts.
        p.add_argument("--target-url", dest="target_url", help=argparse.SUPPRESS)
        p.add_argument("--active", type=flag_bool, metavar="true|false", help="enable or disable")
    p.add_argument("--events", type=comma_list, metavar="A,B", help="types or patterns (call.*)")
    p.add_argument("--tenant", help="the customer account the endpoint belongs to")
    p.add_argument("--description", help="free text")
    p.add_argument("--scheme", choices=SCHEMES, help="signature scheme (default standard)")
    p.add_argument(
        "--algorithm",
        choices=ALGORITHMS,
        help="the standard scheme's algorithm: hmac-sha256 (default) or ed25519 (v1a "
        "signatures; receivers verify with the public key)",
    )
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
    p.add_argument(
        "--paused",
        action=argparse.BooleanOptionalAction,
        help="hold deliveries pending, nothing attempted or skipped, until --no-paused",
    )
    _transport_options(p, creating=creating)
    add_endpoint_options(p, creating=creating)
    auth_options.add_auth_options(p, creating=creating)


def _transport_options(p: argparse.ArgumentParser, *, creating: bool) -> None:
    p.add_argument(
        "--proxy",
        metavar="URL" if creating else "URL|none",
        help="forward proxy, http://[user:pass@]host:port (overrides delivery.proxy"
        + ("" if creating else "; none: back to delivery.proxy")
        + ")",
    )
    replaces = "" if creating else "; on update, together they replace the TLS settings"
    p.add_argument(
        "--tls-client-cert",
        type=text_file,
        metavar="FILE",
        help="PEM client certificate for mutual TLS (with --tls-client-key)" + replaces,
    )
    p.add_argument(
        "--tls-client-key",
        type=text_file,
        metavar="FILE",
        help="PEM private key of --tls-client-cert (never shown again)",
    )
    p.add_argument(
        "--tls-ca",
        type=text_file,
        metavar="FILE",
        help="PEM CA bundle trusted for this endpoint instead of the system store",
    )
    if not creating:
        p.add_argument("--no-tls", action="store_true", help="remove the TLS settings")


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
        call_action("POST", "/v1/endpoints", create_body),
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
    _add_pause_and_retry(g, co)
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
    p.add_argument(
        "--algorithm",
        choices=ALGORITHMS,
        help="switch the standard scheme to this algorithm with the new secret",
    )
    for name, path, help_text, render in (
        ("secret", "secret", "show the signing secret", render_secret),
        ("stats", "stats", "delivery counts and success rate", render_stats),
    ):
        p = _leaf(
            g, name, help_text, co, call_action("GET", f"/v1/endpoints/{{id}}/{path}"), render
        )
        p.add_argument("id", help="endpoint id (ep_…)")


def _fixed_body(body: dict[str, Any], _args: argparse.Namespace) -> dict[str, Any]:
    return body


def _add_pause_and_retry(
    g: Subparsers[argparse.ArgumentParser], co: argparse.ArgumentParser
) -> None:
    for name, paused, help_text, done in (
        (
            "pause",
            True,
            "hold the endpoint's deliveries pending: nothing is attempted, nothing skipped",
            "paused endpoint {args[id]}: its deliveries wait as pending until "
            "`webhookd endpoints resume {args[id]}`",
        ),
        (
            "resume",
            False,
            "deliver what a paused endpoint held, at its limits (in order where ordered)",
            "resumed endpoint {args[id]}",
        ),
    ):
        p = _leaf(
            g,
            name,
            help_text,
            co,
            call_action("PATCH", "/v1/endpoints/{id}", partial(_fixed_body, {"paused": paused})),
            message(done),
        )
        p.add_argument("id", help="endpoint id (ep_…)")
    p = _leaf(
        g,
        "retry-now",
        "attempt every pending delivery of the endpoint now, instead of at its next retry",
        co,
        retry_now,
        render_retried,
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
        "erase-payload",
        "erase an event's stored payload now (its pending deliveries are cancelled)",
        co,
        erase_payload,
        message("erased the payload of event {args[id]}"),
    )
    p.add_argument("id", help="event id (evt_…)")
    p.add_argument("--tenant", help="the tenant whose event this is, when several use the id")
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
    add_event_options(p)


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


def _add_event_type_update(
    g: Subparsers[argparse.ArgumentParser], co: argparse.ArgumentParser
) -> None:
    p = _leaf(
        g,
        "update",
        "change an event type's description, schema or example",
        co,
        call_action("PATCH", "/v1/event-types/{name}", event_type_update_body),
        message("updated event type {doc[name]}"),
    )
    p.add_argument("name", help="the event type's name")
    p.add_argument("--description", help="what the event means")
    p.add_argument(
        "--schema",
        type=_json_file_or_none,
        metavar="FILE",
        help="new JSON Schema file (- for stdin), or none to remove the schema",
    )
    p.add_argument(
        "--example",
        type=_json_file_or_none,
        metavar="FILE",
        help="new example payload file, or none to remove the example",
    )


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
    p.add_argument(
        "--schema",
        type=json_file,
        metavar="FILE",
        help="JSON Schema (draft 2020-12) file every payload must validate against (- for stdin)",
    )
    p.add_argument(
        "--example", type=json_file, metavar="FILE", help="example payload file (must validate)"
    )
    p = _leaf(
        g,
        "get",
        "show one event type with its schema and example",
        co,
        call_action("GET", "/v1/event-types/{name}"),
        render_event_type,
    )
    p.add_argument("name", help="the event type's name")
    _add_event_type_update(g, co)
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


async def _readiness(args: argparse.Namespace) -> str | None:
    """None when the daemon is ready, else why not (one line)."""
    # One attempt: a 503 is the answer here, not something to wait out.
    async with client_for(args, max_attempts=1, timeout_s=10) as api:
        try:
            await api.request("GET", "/readyz")
        except WebhookdError as exc:
            body = exc.body if isinstance(exc.body, dict) else {}
            problems = [str(p) for p in body.get("problems", [])]
            if exc.status == 503 and problems:
                reason = f" ({body['reason']})" if body.get("reason") else ""
                return "not ready: " + ", ".join(problems) + reason
            return describe(exc)
    return None


def cmd_healthcheck(args: argparse.Namespace) -> int:
    """`ready` and exit 0, or the reason on stderr and exit 1."""
    try:
        _health_target(args)
        problem = asyncio.run(_readiness(args))
    except UsageError as exc:
        emit(f"webhookd: {exc}", sys.stderr)
        return EXIT_ERROR
    if problem is not None:
        emit(f"webhookd: {problem}", sys.stderr)
        return EXIT_ERROR
    emit("ready")
    return EXIT_OK


def add_healthcheck(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "healthcheck",
        parents=[common_options()],
        help="exit 0 if the daemon is ready (GET /readyz), 1 if not",
    )
    p.add_argument("-c", "--config", help="find the daemon at this config's listen address")
    p.set_defaults(func=cmd_healthcheck)
