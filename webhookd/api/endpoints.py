"""Endpoints: create, list, get, patch, delete, and their secrets."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import tempfile
from typing import Any

from aiohttp import web
from yarl import URL

from webhookd import jsonio, netguard, signing
from webhookd.api import auth_fields, event_types, keys, routing, serialize
from webhookd.api.context import ANY_TENANT, State, scope, state, tenant_filter
from webhookd.api.errors import ApiError, json_response, validation_error
from webhookd.api.validate import (
    HEADER_NAME_RE,
    Loc,
    Problems,
    boolean,
    number,
    page_json,
    paging,
    query,
    query_bool,
    read_json,
    require_object,
    string,
    string_map,
    timestamp,
    unknown_fields,
)
from webhookd.config import EVENT_TYPE_RE, PROXY_FORM, TENANT_RE, Config, proxy_url
from webhookd.formats import FORMATS
from webhookd.ids import new_id
from webhookd.signing import REDACTED
from webhookd.store.interface import DELIVERY_STATES, Endpoint, NewEvent, NotFound, Store
from webhookd.timefmt import now_ms, to_rfc3339

BODY_LIMIT = 1 << 20
MUTABLE = (
    "url",
    "events",
    "tenant",
    "description",
    "metadata",
    "active",
    "signature",
    "format",
    "headers",
    "delay_s",
    "rate_limit_per_s",
    "max_in_flight",
    "ordered",
    "paused",
    "proxy",
    "tls",
    "auth",
    "filter",
    "channels",
)
RESERVED_HEADERS = {
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "transfer-encoding",
    "connection",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
}


def check_url(value: Any, config: Config, problems: Problems) -> str | None:
    loc = ("body", "url")
    text = string(value, loc, problems, max_len=2048, min_len=1)
    if text is None:
        return None
    try:
        url = URL(text)
    except (ValueError, TypeError):
        problems.add(loc, "expected an absolute http(s) URL")
        return None
    if url.scheme not in ("http", "https") or not url.host or any(c.isspace() for c in text):
        scheme = "https" if config.security.https_only else "http(s)"
        problems.add(loc, f"expected an absolute {scheme} URL such as https://example.com/hooks")
        return None
    if url.user or url.password:
        problems.add(loc, "credentials in the URL are not allowed; use custom headers")
        return None
    if url.scheme == "http" and config.security.https_only:
        problems.add(
            loc,
            "https is required; set security.https_only: false in the config to allow http",
        )
        return None
    refused = netguard.refused_address(url.raw_host or "", config.security.allow_networks)
    if refused is not None:
        problems.add(loc, refused)
        return None
    return text


def check_events(value: Any, store: Store, problems: Problems) -> list[str] | None:
    loc = ("body", "events")
    if not isinstance(value, list) or not value:
        problems.add(loc, 'expected a non-empty list of event types or patterns, e.g. ["*"]')
        return None
    if len(value) > 250:
        problems.add(loc, "expected at most 250 entries")
        return None
    out: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            problems.add((*loc, i), "expected a string")
            continue
        if item == "*":
            out.append(item)
            continue
        name = item[:-2] if item.endswith(".*") else item
        if not EVENT_TYPE_RE.fullmatch(name) or len(item) > 200:
            problems.add((*loc, i), "expected *, a prefix pattern such as call.* or a type name")
            continue
        if not item.endswith(".*") and not store.has_event_type(item):
            problems.add(
                (*loc, i),
                f"unknown event type {item!r}; add it with POST /v1/event-types or in the "
                "config's event_types",
            )
            continue
        if item not in out:
            out.append(item)
    return out


def check_signature(value: Any, problems: Problems) -> signing.SignatureSpec | None:
    loc = ("body", "signature")
    if not isinstance(value, dict):
        problems.add(loc, 'expected an object such as {"scheme": "standard"}')
        return None
    start = len(problems.items)
    unknown_fields(value, ("scheme", "header", "timestamp_header", "algorithm"), problems, loc)
    scheme = value.get("scheme", "standard")
    if scheme not in signing.SCHEMES:
        problems.add((*loc, "scheme"), f"expected one of {', '.join(signing.SCHEMES)}")
        return None
    algorithm: str | None = None
    if value.get("algorithm") is not None:
        algorithm = keys.check_algorithm(value["algorithm"], scheme, (*loc, "algorithm"), problems)
    names: dict[str, str | None] = {}
    for key in ("header", "timestamp_header"):
        raw = value.get(key)
        if raw is None:
            names[key] = None
            continue
        if not isinstance(raw, str) or not HEADER_NAME_RE.fullmatch(raw):
            problems.add((*loc, key), "expected an HTTP header name")
            continue
        if raw.lower() in RESERVED_HEADERS:
            problems.add((*loc, key), f"{raw} is set by webhookd itself")
            continue
        names[key] = raw
    if len(problems.items) > start:
        return None
    if names["header"] and scheme in ("standard", "none"):
        problems.add((*loc, "header"), f"the {scheme} scheme has no configurable header")
        return None
    if names["timestamp_header"] and scheme != "hmac-sha256-timestamped":
        problems.add((*loc, "timestamp_header"), "only hmac-sha256-timestamped uses it")
        return None
    spec = signing.SignatureSpec(
        scheme=scheme,
        header=names["header"],
        timestamp_header=names["timestamp_header"],
        algorithm=algorithm or "hmac-sha256",
    )
    if (
        spec.signature_header
        and spec.ts_header
        and (spec.signature_header.lower() == spec.ts_header.lower())
    ):
        problems.add((*loc, "timestamp_header"), "must differ from header")
        return None
    return spec


def check_secret(
    value: Any, scheme: str, problems: Problems, *, algorithm: str = "hmac-sha256"
) -> str | None:
    loc = ("body", "secret")
    text = string(value, loc, problems, max_len=256)
    if text is None:
        return None
    if scheme == "standard":
        reason = signing.standard_secret_problem(text, algorithm)
        if reason is not None:
            problems.add(loc, keys.secret_message(algorithm, reason, text))
            return None
    elif len(text) < 16:
        problems.add(loc, "expected at least 16 characters")
        return None
    if any(c in text for c in "\r\n"):
        problems.add(loc, "line breaks are not allowed")
        return None
    return text


def check_format(value: Any, problems: Problems) -> str | list[str] | None:
    loc = ("body", "format")
    if isinstance(value, str):
        if value not in FORMATS:
            problems.add(loc, f"expected one of {', '.join(FORMATS)} or a list of them")
            return None
        return value
    if (
        isinstance(value, list)
        and 0 < len(value) <= len(FORMATS)
        and all(isinstance(v, str) and v in FORMATS for v in value)
        and len(set(value)) == len(value)
    ):
        return list(value)
    problems.add(loc, f"expected one of {', '.join(FORMATS)} or a list of distinct ones")
    return None


def check_headers(
    value: Any, spec: signing.SignatureSpec, problems: Problems
) -> dict[str, str] | None:
    loc = ("body", "headers")
    headers = string_map(value, loc, problems, max_items=20, max_len=4096)
    if headers is None:
        return None
    reserved = RESERVED_HEADERS | set(spec.header_names())
    ok = True
    seen: set[str] = set()
    for name, val in headers.items():
        if not HEADER_NAME_RE.fullmatch(name):
            problems.add((*loc, name), "expected an HTTP header name (letters, digits, - and _)")
            ok = False
        elif name.lower() in reserved:
            problems.add((*loc, name), f"{name} is set by webhookd and cannot be overridden")
            ok = False
        elif name.lower() in seen:
            problems.add((*loc, name), "given twice with different case")
            ok = False
        elif any(c in val for c in "\r\n\x00"):
            problems.add((*loc, name), "header values cannot contain CR, LF or NUL")
            ok = False
        seen.add(name.lower())
    return headers if ok else None


def check_tenant(value: Any, request: web.Request, problems: Problems) -> str | None:
    if value is not None and (not isinstance(value, str) or not TENANT_RE.fullmatch(value)):
        problems.add(("body", "tenant"), "expected null or 1-128 of [A-Za-z0-9_.:@-]")
        return None
    limited = scope(request)
    if limited is not ANY_TENANT and value != limited:
        raise ApiError(403, f"this API key may only use tenant {limited!r}")
    tenant: str | None = value
    return tenant


def validate_fields(
    body: dict[str, Any], request: web.Request, *, creating: bool, current: Endpoint | None
) -> dict[str, Any]:
    """Checked column values for the fields present in `body`."""
    config = state(request).config
    problems = Problems()
    _check_names(body, creating, problems)
    out: dict[str, Any] = {}
    _plain_fields(body, request, creating, problems, out)
    spec = _signing_fields(body, creating, current, problems, out)
    _limit_fields(body, config, problems, out)
    _scheme_change(current, spec, problems, out)
    if "proxy" in body:
        out["proxy"] = check_proxy(body["proxy"], config, current, problems)
    if "tls" in body:
        out["tls"] = check_tls(body["tls"], current, problems)
    if "auth" in body:
        out["auth"] = auth_fields.check_auth(body["auth"], config, current, problems)
    auth_fields.check_header_clash(body, out, current, problems)
    routing.endpoint_fields(body, problems, out)
    problems.raise_if_any()
    if creating and "secret" not in out:
        out["secret"] = signing.generate_secret(spec.algorithm)
    if out.get("active"):
        out["disabled_reason"] = None
        if current is not None and not current.active:
            # A fresh start: otherwise the first failure after re-enabling would count
            # the whole disabled period and disable the endpoint again at once.
            out["failing_since"] = None
    return out


def _check_names(body: dict[str, Any], creating: bool, problems: Problems) -> None:
    allowed = (*MUTABLE, "secret") if creating else MUTABLE
    unknown_fields(body, allowed, problems)
    if not creating and "secret" in body:
        problems.items[-1:] = []
        problems.add(("body", "secret"), "use POST /v1/endpoints/{id}/secret/rotate")
    if creating and "url" not in body:
        problems.add(("body", "url"), "field required")


def _plain_fields(
    body: dict[str, Any],
    request: web.Request,
    creating: bool,
    problems: Problems,
    out: dict[str, Any],
) -> None:
    """url, events, tenant, description, metadata, active, ordered and paused."""
    st = state(request)
    if "url" in body:
        out["url"] = check_url(body["url"], st.config, problems)
    if "events" in body:
        out["events"] = check_events(body["events"], st.store, problems)
    if "tenant" in body:
        out["tenant"] = check_tenant(body["tenant"], request, problems)
    elif creating:
        limited = scope(request)
        out["tenant"] = None if limited is ANY_TENANT else limited
    if "description" in body:
        out["description"] = string(body["description"], ("body", "description"), problems)
    if "metadata" in body:
        out["metadata"] = string_map(body["metadata"], ("body", "metadata"), problems, max_items=50)
    for key in ("active", "ordered", "paused"):
        if key in body:
            out[key] = boolean(body[key], ("body", key), problems)


def _signing_fields(
    body: dict[str, Any],
    creating: bool,
    current: Endpoint | None,
    problems: Problems,
    out: dict[str, Any],
) -> signing.SignatureSpec:
    """signature, secret, format and headers, which depend on the signature scheme; returns
    the scheme the endpoint will have."""
    before = current.signature if current else signing.SignatureSpec()
    spec = before
    if "signature" in body:
        checked = check_signature(body["signature"], problems)
        if checked is None:
            out["signature"] = None
        spec = checked or spec
    spec = keys.settle(body, spec, current)
    if "signature" not in out and ("signature" in body or spec != before):
        out["signature"] = _stored_signature(spec)
    if "secret" in body and creating:
        out["secret"] = check_secret(
            body["secret"], spec.scheme, problems, algorithm=spec.algorithm
        )
    if "format" in body:
        out["format"] = check_format(body["format"], problems)
    if "headers" in body:
        out["headers"] = check_headers(body["headers"], spec, problems)
    elif current is not None and out.get("signature"):
        clash = set(spec.header_names()) & {h.lower() for h in current.headers}
        if clash:
            problems.add(
                ("body", "signature"), f"the endpoint's custom headers already use {sorted(clash)}"
            )
    return spec


def _limit_fields(
    body: dict[str, Any], config: Config, problems: Problems, out: dict[str, Any]
) -> None:
    if "delay_s" in body:
        out["delay_s"] = number(body["delay_s"], ("body", "delay_s"), problems, lo=0, hi=604800)
    if "rate_limit_per_s" in body:
        value = body["rate_limit_per_s"]
        out["rate_limit_per_s"] = (
            None
            if value is None
            else number(value, ("body", "rate_limit_per_s"), problems, lo=0, hi=10000, lo_open=True)
        )
    if "max_in_flight" in body:
        value = body["max_in_flight"]
        n = (
            None
            if value is None
            else number(
                value,
                ("body", "max_in_flight"),
                problems,
                lo=1,
                hi=config.delivery.workers,
                integer=True,
            )
        )
        out["max_in_flight"] = int(n) if n is not None else None


def _scheme_change(
    current: Endpoint | None, spec: signing.SignatureSpec, problems: Problems, out: dict[str, Any]
) -> None:
    """A new scheme or algorithm needs a secret it can use (see webhookd.api.keys)."""
    if current is None or not out.get("signature"):
        return
    problem = keys.scheme_change_problem(current, spec)
    if problem is not None:
        problems.add(*problem)


def _stored_signature(spec: signing.SignatureSpec) -> dict[str, str]:
    """The signature object as stored: only what the caller set, so defaults can change."""
    pairs = (
        ("scheme", spec.scheme),
        ("header", spec.header),
        ("timestamp_header", spec.timestamp_header),
        ("algorithm", "ed25519" if spec.algorithm == "ed25519" else None),
    )
    return {k: v for k, v in pairs if v is not None}


# --- how the endpoint is reached: proxy and TLS --------------------------------------

TLS_PARTS = {"client_cert": 65536, "client_key": 65536, "ca": 1 << 19}  # longest PEM text


def check_proxy(
    value: Any, config: Config, current: Endpoint | None, problems: Problems
) -> str | None:
    """A forward proxy URL, or None (null: back to delivery.proxy). `[redacted]` in place
    of the password, as answers show it, keeps the stored password."""
    loc = ("body", "proxy")
    if value is None:
        return None
    if isinstance(value, str) and serialize.split_proxy(value)[2] == REDACTED:
        value = _unredact_proxy(value, current)
        if value is None:
            problems.add(
                loc,
                f"{REDACTED} stands for the stored password, and this endpoint has no proxy "
                "password for that user; give the password itself",
            )
            return None
    try:
        text = proxy_url(value)
    except ValueError as exc:  # the reason never quotes the value (it may hold a password)
        problems.add(loc, f"expected {PROXY_FORM}: {exc}")
        return None
    ip = netguard.parse_host_address(URL(text).raw_host or "")
    if ip is not None and not netguard.AddressPolicy(config.security.allow_networks).is_allowed(ip):
        problems.add(
            loc,
            f"the proxy's address {netguard.address_text(ip)} is refused by the address "
            "policy; add its network to security.allow_networks to allow it",
        )
        return None
    return text


def _unredact_proxy(value: str, current: Endpoint | None) -> str | None:
    """`value` with the stored password of the same user put back, or None if none."""
    if current is None or current.proxy is None:
        return None
    prefix, user, _, hostport = serialize.split_proxy(value)
    _, stored_user, stored_password, _ = serialize.split_proxy(current.proxy)
    if stored_password is None or stored_user != user:
        return None
    return f"{prefix}{user}:{stored_password}@{hostport}"


def check_tls(value: Any, current: Endpoint | None, problems: Problems) -> dict[str, str] | None:
    """TLS material as PEM texts, each loaded into an SSLContext to prove it is usable.

    Messages name the part at fault and never quote it: a key is a secret."""
    loc = ("body", "tls")
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        problems.add(
            loc,
            "expected null or an object with client_cert and client_key (PEM), ca (PEM "
            "bundle), or all three",
        )
        return None
    start = len(problems.items)
    unknown_fields(value, TLS_PARTS, problems, loc)
    texts: dict[str, str] = {}
    for part, max_len in TLS_PARTS.items():
        if part in value:
            text = string(value[part], (*loc, part), problems, max_len=max_len, min_len=1)
            if text is not None:
                texts[part] = text
    if len(problems.items) > start:
        return None
    if texts.get("client_key") == REDACTED:
        stored = current.tls.client_key if current is not None and current.tls else None
        if stored is None:
            problems.add(
                (*loc, "client_key"),
                f"{REDACTED} keeps the stored key, but this endpoint has none; give the key",
            )
            return None
        texts["client_key"] = stored
    if ("client_cert" in texts) != ("client_key" in texts):
        problems.add(loc, "client_cert and client_key go together: give both or neither")
        return None
    return texts if _tls_loads(texts, loc, problems) else None


def _tls_loads(texts: dict[str, str], loc: Loc, problems: Problems) -> bool:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ok = True
    if "client_cert" in texts:
        if not _loads_ca(texts["client_cert"]):
            problems.add((*loc, "client_cert"), "expected a PEM certificate (chain)")
            ok = False
        elif not _loads_cert_chain(ctx, texts["client_cert"], texts["client_key"]):
            problems.add(
                (*loc, "client_key"),
                "expected the unencrypted PEM private key of client_cert",
            )
            ok = False
    if "ca" in texts and not _loads_ca(texts["ca"]):
        problems.add((*loc, "ca"), "expected a PEM bundle of one or more certificates")
        ok = False
    return ok


def _loads_ca(pem: str) -> bool:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cadata=pem)
    except (ssl.SSLError, ValueError, TypeError):
        return False
    return ctx.cert_store_stats()["x509"] > 0


class _Encrypted(Exception):
    pass


def _no_password() -> str:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise _Encrypted


def _loads_cert_chain(ctx: ssl.SSLContext, cert: str, key: str) -> bool:
    """Whether `key` is the private key of `cert`, as OpenSSL sees it. ssl reads them only
    from a file: one readable by this user alone (mkstemp's 0600), deleted at once."""
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".pem") as f:
        f.write(f"{key.strip()}\n{cert.strip()}\n")
        f.flush()
        try:
            ctx.load_cert_chain(f.name, password=_no_password)
        except (ssl.SSLError, ValueError, OSError, _Encrypted):
            return False
    return True


CAP_KEY = "limits.max_endpoints_per_tenant"


def _cap_lock(st: State) -> contextlib.AbstractAsyncContextManager[Any]:
    """Held from counting a tenant's endpoints to adding one, so that two requests at
    once cannot both take its last place; nothing to hold without a cap."""
    if st.config.limits.max_endpoints_per_tenant is None:
        return contextlib.nullcontext()
    lock: asyncio.Lock = st.extra.setdefault("endpoint_cap_lock", asyncio.Lock())
    return lock


async def _check_tenant_cap(st: State, tenant: str | None) -> None:
    """422 if `tenant` (no tenant counts as one too) has all the endpoints the cap allows."""
    cap = st.config.limits.max_endpoints_per_tenant
    if cap is None:
        return
    # Through the store's per-tenant index: at most `cap` rows, however many endpoints.
    page = await st.store.list_endpoints(tenant=tenant, cursor=None, limit=cap)
    if len(page.data) < cap:
        return
    who = f"tenant {tenant!r}" if tenant is not None else "the endpoints without a tenant"
    msg = (
        f"{who} already has {cap} endpoints, the most {CAP_KEY} allows; "
        "delete one or raise the limit"
    )
    raise ApiError(422, msg, detail=[{"loc": ["body", "tenant"], "msg": msg}])


async def create(request: web.Request) -> web.Response:
    body = require_object(await read_json(request, BODY_LIMIT))
    fields = validate_fields(body, request, creating=True, current=None)
    st = state(request)
    async with _cap_lock(st):
        await _check_tenant_cap(st, fields.get("tenant"))
        ep = await st.store.create_endpoint(fields)
    return json_response(serialize.endpoint(ep, st.config, with_secret=True), 201)


async def visible(request: web.Request) -> Endpoint:
    """The endpoint of the path, or 404 if it does not exist or belongs to another tenant."""
    endpoint_id = request.match_info["endpoint_id"]
    ep = await state(request).store.get_endpoint(endpoint_id)
    limited = scope(request)
    if limited is not ANY_TENANT and ep.tenant != limited:
        raise NotFound(f"no endpoint with id {endpoint_id}")
    return ep


async def get(request: web.Request) -> web.Response:
    return json_response(serialize.endpoint(await visible(request), state(request).config))


async def list_(request: web.Request) -> web.Response:
    params = query(request, ("tenant", "active"))
    problems = Problems()
    cursor, limit = paging(params, problems)
    active = query_bool(params, "active", problems)
    problems.raise_if_any()
    tenant = tenant_filter(request, params)
    st = state(request)
    page = await st.store.list_endpoints(tenant=tenant, active=active, cursor=cursor, limit=limit)
    return json_response(
        page_json([serialize.endpoint(e, st.config) for e in page.data], page.next_cursor)
    )


async def patch(request: web.Request) -> web.Response:
    ep = await visible(request)
    body = require_object(await read_json(request, BODY_LIMIT))
    fields = validate_fields(body, request, creating=False, current=ep)
    st = state(request)
    async with _cap_lock(st):
        if "tenant" in fields and fields["tenant"] != ep.tenant:
            await _check_tenant_cap(st, fields["tenant"])
        updated = await st.store.update_endpoint(ep.id, fields) if fields else ep
    return json_response(serialize.endpoint(updated, st.config))


async def delete(request: web.Request) -> web.Response:
    ep = await visible(request)
    st = state(request)
    await st.store.delete_endpoint(ep.id)
    return web.Response(status=204)


async def get_secret(request: web.Request) -> web.Response:
    ep = await visible(request)
    return json_response(keys.secret_answer(ep))


MAX_GRACE_S = 7 * 86400


async def rotate_secret(request: web.Request) -> web.Response:
    ep = await visible(request)
    body = await read_json(request, BODY_LIMIT) if request.can_read_body else {}
    body = require_object(body)
    problems = Problems()
    unknown_fields(body, ("secret", "grace_s", "algorithm"), problems)
    grace = 86400.0
    if "grace_s" in body:
        grace = number(body["grace_s"], ("body", "grace_s"), problems, lo=0, hi=MAX_GRACE_S) or 0
    spec = keys.rotated_spec(body, ep, problems)
    secret = None
    if body.get("secret") is not None:
        secret = check_secret(body["secret"], spec.scheme, problems, algorithm=spec.algorithm)
    problems.raise_if_any()
    new_secret = secret or signing.generate_secret(spec.algorithm)
    changed = _stored_signature(spec) if spec != ep.signature else None
    await state(request).store.rotate_secret(ep.id, new_secret, grace, signature=changed)
    return json_response(keys.secret_fields(spec, new_secret))


async def send_test(request: web.Request) -> web.Response:
    ep = await visible(request)
    st = state(request)
    body = require_object(await read_json(request, BODY_LIMIT) if request.can_read_body else {})
    problems = Problems()
    unknown_fields(body, ("event_type", "payload"), problems)
    event_type: Any = body.get("event_type", "webhookd.test")
    if not isinstance(event_type, str) or not st.store.has_event_type(event_type):
        problems.add(
            ("body", "event_type"),
            f"unknown event type {event_type!r}; add it with POST /v1/event-types first",
        )
    payload = event_types.test_payload(st, event_type, body, problems)
    if not isinstance(payload, dict):
        problems.add(("body", "payload"), "expected a JSON object")
    problems.raise_if_any()
    if not ep.active:
        raise ApiError(
            409, 'the endpoint is disabled; re-enable it with PATCH {"active": true} first'
        )
    try:
        payload_json, _ = jsonio.dump_payload(payload)
    except jsonio.JSONError as exc:
        raise validation_error([{"loc": ["body", "payload", *exc.path], "msg": str(exc)}]) from None
    if len(payload_json) > st.config.limits.max_payload_bytes:
        raise ApiError(413, "the test payload is larger than limits.max_payload_bytes")
    event = NewEvent(
        id=new_id("evt"),
        type=event_type,
        tenant=ep.tenant,
        payload_json=payload_json,
        body_hash=None,
        deliver_at=None,
        only_endpoint=ep.id,
    )
    [res] = await st.store.publish([event])
    if not res.delivery_ids:
        raise NotFound(f"no endpoint with id {ep.id}")
    return json_response({"event_id": res.event.id, "delivery_id": res.delivery_ids[0]}, 202)


async def recover(request: web.Request) -> web.Response:
    ep = await visible(request)
    st = state(request)
    body = require_object(await read_json(request, BODY_LIMIT))
    problems = Problems()
    unknown_fields(body, ("since", "until"), problems)
    since = until = None
    if "since" not in body:
        problems.add(("body", "since"), "field required")
    else:
        since = timestamp(body["since"], ("body", "since"), problems)
    if body.get("until") is not None:
        until = timestamp(body["until"], ("body", "until"), problems)
    if since is not None and until is not None and until <= since:
        problems.add(("body", "until"), "must be after since")
    problems.raise_if_any()
    assert since is not None
    count = await st.store.recover(ep.id, since, until)
    return json_response({"requeued": count}, 202)


async def stats(request: web.Request) -> web.Response:
    ep = await visible(request)
    st = state(request)
    now = now_ms()
    data = await st.store.endpoint_stats(ep.id, now - 86400 * 1000)
    counts = {s: data["counts"].get(s, 0) for s in DELIVERY_STATES}
    return json_response(
        {
            "counts": counts,
            "success_rate_24h": data["success_rate_24h"],
            "in_flight": st.dispatcher.in_flight_for(ep.id) if st.dispatcher else 0,
            "last_success_at": to_rfc3339(ep.last_success_at),
            "failing_since": to_rfc3339(ep.failing_since),
        }
    )


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/endpoints", create),
        web.get("/v1/endpoints", list_, allow_head=False),
        web.get("/v1/endpoints/{endpoint_id}", get, allow_head=False),
        web.patch("/v1/endpoints/{endpoint_id}", patch),
        web.delete("/v1/endpoints/{endpoint_id}", delete),
        web.get("/v1/endpoints/{endpoint_id}/secret", get_secret, allow_head=False),
        web.post("/v1/endpoints/{endpoint_id}/secret/rotate", rotate_secret),
        web.post("/v1/endpoints/{endpoint_id}/test", send_test),
        web.post("/v1/endpoints/{endpoint_id}/recover", recover),
        web.get("/v1/endpoints/{endpoint_id}/stats", stats, allow_head=False),
    ]
