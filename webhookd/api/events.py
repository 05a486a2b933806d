"""Events: publish (single and batch), list, get; and the event-type catalog."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from webhookd import jsonio, tracing
from webhookd.api import event_types, routing, serialize
from webhookd.api.context import (
    ANY_TENANT,
    State,
    scope,
    state,
    tenant_filter,
)
from webhookd.api.errors import ApiError, json_response, validation_error
from webhookd.api.validate import (
    LARGE_BODY_BYTES,
    Problems,
    page_json,
    paging,
    parse_json,
    query,
    query_time,
    read_body,
    read_json,
    require_object,
    string,
    timestamp,
    unknown_fields,
)
from webhookd.config import EVENT_TYPE_RE, TENANT_RE
from webhookd.ids import new_id
from webhookd.store.codec import body_hash
from webhookd.store.interface import AmbiguousId, NewEvent, PublishResult
from webhookd.timefmt import now_ms

EVENT_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
MAX_BATCH_EVENTS = 1000
MAX_DELIVER_AHEAD_MS = 366 * 86400 * 1000
# Room for the envelope fields around a payload of the maximum size.
ENVELOPE_SLACK = 65536


Loc = tuple[str | int, ...]


def _check_event(
    body: Any,
    loc: Loc,
    st: State,
    limited: Any,
    problems: Problems,
    *,
    id_header: str | None,
    too_large: list[tuple[Loc, int]],
) -> NewEvent | None:
    """The event one publish describes, or None with its problems added. `limited` is
    the tenant the caller's key is limited to (ANY_TENANT if none); a key publishing to
    another tenant raises 403."""
    if not isinstance(body, dict):
        problems.add(loc, "expected a JSON object with type and payload")
        return None
    start = len(problems.items)
    unknown_fields(
        body, ("type", "payload", "tenant", "id", "deliver_at", "channels"), problems, loc
    )
    # Checked in this order so that `detail` lists the fields' problems in it.
    event_type = _check_type(body, loc, st, problems)
    payload = body.get("payload")
    if "payload" not in body:
        problems.add((*loc, "payload"), "field required")
    elif not isinstance(payload, dict):
        problems.add((*loc, "payload"), "expected a JSON object")
    tenant = _check_tenant(body, loc, limited, problems)
    event_id = _check_id(body, loc, id_header, problems)
    deliver_at = _check_deliver_at(body, loc, problems)
    channels = routing.event_channels(body, loc, problems)
    if len(problems.items) > start:
        return None
    try:
        payload_json, payload = jsonio.dump_payload(payload)
    except jsonio.JSONError as exc:
        problems.add((*loc, "payload", *exc.path), str(exc))
        return None
    if len(payload_json) > st.config.limits.max_payload_bytes:
        too_large.append(((*loc, "payload"), len(payload_json)))
        return None
    if not event_types.check_payload(st, event_type, body["payload"], (*loc, "payload"), problems):
        return None
    chosen = event_id is not None
    return NewEvent(
        id=event_id if chosen else new_id("evt"),
        type=event_type,
        tenant=tenant,
        payload_json=payload_json,
        body_hash=body_hash(event_type, tenant, payload, deliver_at, channels) if chosen else None,
        deliver_at=deliver_at,
        channels=channels,
    )


def _check_type(body: dict[str, Any], loc: Loc, st: State, problems: Problems) -> Any:
    event_type: Any = body.get("type")
    if "type" not in body:
        problems.add((*loc, "type"), "field required")
    elif string(event_type, (*loc, "type"), problems, max_len=200, min_len=1) is not None:
        if not EVENT_TYPE_RE.fullmatch(event_type):
            problems.add((*loc, "type"), "expected dot-separated segments of [a-zA-Z0-9_-]")
        elif not st.store.has_event_type(event_type):
            problems.add(
                (*loc, "type"),
                f"unknown event type {event_type!r}; add it with POST /v1/event-types or in "
                "the config's event_types",
            )
    return event_type


def _check_tenant(body: dict[str, Any], loc: Loc, limited: Any, problems: Problems) -> Any:
    """The event's tenant: the body's, or the one the caller's key is limited to (a key
    naming another tenant raises 403)."""
    tenant = body.get("tenant")
    if tenant is not None and (not isinstance(tenant, str) or not TENANT_RE.fullmatch(tenant)):
        problems.add((*loc, "tenant"), "expected null or 1-128 of [A-Za-z0-9_.:@-]")
    if limited is not ANY_TENANT:
        if "tenant" in body and tenant != limited:
            raise ApiError(403, f"this API key may only publish to tenant {limited!r}")
        tenant = limited
    return tenant


def _check_id(body: dict[str, Any], loc: Loc, id_header: str | None, problems: Problems) -> Any:
    """The caller's event id (the body's or the Idempotency-Key header), or None."""
    event_id: Any = body.get("id")
    if event_id is None and id_header is not None:
        event_id = id_header
    elif event_id is not None and id_header is not None and event_id != id_header:
        problems.add((*loc, "id"), "differs from the Idempotency-Key header")
    if event_id is not None and (
        not isinstance(event_id, str) or not EVENT_ID_RE.fullmatch(event_id)
    ):
        problems.add((*loc, "id"), "expected 1-128 of [A-Za-z0-9_.:-]")
    return event_id


def _check_deliver_at(body: dict[str, Any], loc: Loc, problems: Problems) -> int | None:
    if body.get("deliver_at") is None:
        return None
    deliver_at = timestamp(body["deliver_at"], (*loc, "deliver_at"), problems)
    if deliver_at is not None and deliver_at - now_ms() > MAX_DELIVER_AHEAD_MS:
        problems.add((*loc, "deliver_at"), "expected at most one year ahead")
    return deliver_at


def _json_path(path: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in path)  # as _raise_too_large names a place


def _check_members(
    request: web.Request,
    st: State,
    members: jsonio.Members,
    problems: Problems,
    too_large: list[tuple[Any, int]],
) -> list[NewEvent | None]:
    """The events of a batch's members, each checked as it is parsed (and then dropped,
    but for what it becomes); stops at the first event past MAX_BATCH_EVENTS."""
    limited = scope(request)
    checked: list[NewEvent | None] = []
    lists = 0
    for key, index, value in members:
        if key != "events":
            problems.add(("body", key), "unknown field; expected one of events")
        elif index is None or (index == 0 and lists):
            what = "given more than once" if lists else "expected a non-empty list of events"
            problems.add(("body", "events"), what)
            lists += 1
        elif index >= MAX_BATCH_EVENTS:
            raise validation_error(
                [{"loc": ["body", "events"], "msg": f"expected at most {MAX_BATCH_EVENTS} events"}]
            )
        else:
            lists += index == 0
            loc = ("body", "events", index)
            checked.append(
                _check_event(value, loc, st, limited, problems, id_header=None, too_large=too_large)
            )
    if not lists:
        problems.add(("body", "events"), "expected a non-empty list of events")
    return checked


def _raise_too_large(request: web.Request, too_large: list[tuple[Any, int]]) -> None:
    if too_large:
        loc, size = too_large[0]
        limit = state(request).config.limits.max_payload_bytes
        where = ".".join(str(p) for p in loc[1:])
        raise ApiError(
            413,
            f"{where} is {size} bytes; at most {limit} are accepted (limits.max_payload_bytes)",
        )


def _count(st: State, results: list[PublishResult]) -> None:
    counter = st.extra.get("metrics")
    if counter is not None:
        counter.published(sum(1 for r in results if r.created))


def valid_event(body: Any, st: State, limited: Any, id_header: str | None) -> NewEvent | None:
    """The event of a single publish whose body passes every check, or None when it does
    not (a 403 included): the caller then leaves the answer to `publish`, which explains."""
    problems = Problems()
    too_large: list[tuple[Any, int]] = []
    try:
        ev = _check_event(
            body, ("body",), st, limited, problems, id_header=id_header, too_large=too_large
        )
    except ApiError:
        return None
    return None if problems.items or too_large else ev


async def commit_one(st: State, ev: NewEvent) -> tuple[int, dict[str, Any]]:
    """Store one checked event: the answer's status (202 if new, 200 if it existed) and
    body."""
    [res] = await st.store.publish([ev])
    _count(st, [res])
    return (202 if res.created else 200), serialize.publish_result(res)


async def publish(request: web.Request) -> web.Response:
    st = state(request)
    with tracing.publishing(request, st.extra.get(tracing.TRACER), "publish") as trace:
        return await _publish(request, st, trace)


async def _publish(request: web.Request, st: State, trace: tracing.PublishSpan) -> web.Response:
    limit = st.config.limits.max_payload_bytes + ENVELOPE_SLACK
    body = await read_json(request, limit)
    problems = Problems()
    too_large: list[tuple[Any, int]] = []
    ev = _check_event(
        body,
        ("body",),
        st,
        scope(request),
        problems,
        id_header=request.headers.get("Idempotency-Key"),
        too_large=too_large,
    )
    problems.raise_if_any()
    _raise_too_large(request, too_large)
    assert ev is not None
    ev.traceparent = trace.traceparent
    status, answer = await commit_one(st, ev)
    trace.published(status, [answer])
    return json_response(answer, status)


async def publish_batch(request: web.Request) -> web.Response:
    st = state(request)
    with tracing.publishing(request, st.extra.get(tracing.TRACER), "publish batch") as trace:
        return await _publish_batch(request, st, trace)


async def _publish_batch(
    request: web.Request, st: State, trace: tracing.PublishSpan
) -> web.Response:
    raw = await read_body(request, st.config.limits.max_batch_bytes)
    async with _parse_turn(st, len(raw)):
        checked = _check_batch(request, st, _batch_members(raw, st))
        del raw
    for ev in checked:
        ev.traceparent = trace.traceparent
    results = await st.store.publish(checked)
    _count(st, results)
    status = 202 if any(r.created for r in results) else 200
    data = [serialize.publish_result(r) for r in results]
    trace.published(status, data)
    return json_response({"data": data}, status)


# A large batch body is parsed one event at a time (jsonio.iter_members), and waits for
# its turn to be: one at a time, the others held as their bytes. Parsed whole and all at
# once, four 16 MiB batches of small events took 1.8 GB.
PARSE_TURNS = 1
PARSE_WAIT_S = 10.0
_PARSE_GATE = "batch_parse_gate"


@contextlib.asynccontextmanager
async def _parse_turn(st: State, size: int) -> AsyncIterator[None]:
    """Hold one of PARSE_TURNS for a body over LARGE_BODY_BYTES; 503 with Retry-After
    when none comes within PARSE_WAIT_S."""
    if size <= LARGE_BODY_BYTES:
        yield
        return
    gate = st.extra.get(_PARSE_GATE)
    if gate is None:
        gate = st.extra[_PARSE_GATE] = asyncio.Semaphore(PARSE_TURNS)
    try:
        async with asyncio.timeout(PARSE_WAIT_S):
            await gate.acquire()
    except TimeoutError:
        raise ApiError(
            503,
            "other large batches are being parsed; retry shortly",
            headers={"Retry-After": "2"},
        ) from None
    try:
        yield
    finally:
        gate.release()


def _batch_members(raw: bytes | bytearray, st: State) -> jsonio.Members:
    """The members of a batch body: parsed whole when small, else event by event."""
    if len(raw) <= LARGE_BODY_BYTES:
        return _members_of(require_object(parse_json(raw)))
    return jsonio.iter_members(raw, "events", st.config.limits.max_payload_bytes + ENVELOPE_SLACK)


def _members_of(body: dict[str, Any]) -> jsonio.Members:
    for key, value in body.items():
        if key == "events" and isinstance(value, list):
            for i, e in enumerate(value):
                yield key, i, e
        else:
            yield key, None, value


def _check_batch(request: web.Request, st: State, members: jsonio.Members) -> list[NewEvent]:
    """Every event of a batch body, checked: 422 naming the index of each bad one."""
    problems = Problems()
    too_large: list[tuple[Any, int]] = []
    try:
        checked = _check_members(request, st, members, problems, too_large)
    except jsonio.NotAnObject:
        raise validation_error([{"loc": ["body"], "msg": "expected a JSON object"}]) from None
    except jsonio.TooLarge as exc:
        limit = st.config.limits.max_payload_bytes + ENVELOPE_SLACK
        raise ApiError(
            413,
            f"{_json_path(exc.path)} is longer than {limit} bytes "
            "(limits.max_payload_bytes, and room for the event's other fields)",
        ) from None
    except jsonio.JSONError as exc:
        where = f"{_json_path(exc.path)}: " if exc.path else ""
        raise ApiError(400, f"the request body is not valid JSON: {where}{exc}") from None
    problems.raise_if_any()
    _raise_too_large(request, too_large)
    # Ids are unique per tenant: the same id for two tenants is two events.
    seen: dict[tuple[str | None, str], int] = {}
    for i, e in enumerate(checked):
        assert e is not None
        key = (e.tenant, e.id)
        if key in seen and e.body_hash is not None:
            first = checked[seen[key]]
            assert first is not None
            if first.body_hash != e.body_hash:
                problems.add(
                    ("body", "events", i, "id"),
                    f"repeats events[{seen[key]}].id with another body",
                )
        seen.setdefault(key, i)
    problems.raise_if_any()
    return [e for e in checked if e is not None]


async def get(request: web.Request) -> web.Response:
    """One event by id. Ids are unique per tenant only, so the lookup is in one tenant's
    ids: a scoped key's own; for an unscoped key the `tenant` query parameter's (empty:
    the events without a tenant), or else any tenant's as long as only one uses the id
    (409 naming the tenants when several do)."""
    event_id = request.match_info["event_id"]
    try:
        ev, deliveries = await state(request).store.get_event(event_id, event_tenant(request))
    except AmbiguousId as exc:
        raise ambiguous_event(exc) from None
    return json_response(serialize.event(ev, deliveries))


def ambiguous_event(exc: AmbiguousId) -> ApiError:
    """The 409 of an event id that several tenants use, looked up with no tenant named."""
    names = ", ".join(sorted(t if t is not None else "no tenant" for t in exc.tenants))
    return ApiError(
        409,
        f"event id {exc.event_id} is used by several tenants ({names}); add ?tenant=<name> "
        "to choose one, or ?tenant= for the event without a tenant",
    )


def event_tenant(request: web.Request) -> Any:
    """The tenant whose event ids GET /v1/events/{id} looks in (ANY_TENANT: all)."""
    values = request.query.getall("tenant", [])
    if len(values) > 1:
        raise validation_error([{"loc": ["query", "tenant"], "msg": "given more than once"}])
    chosen: Any = (values[0] or None) if values else ANY_TENANT
    limited = scope(request)
    if limited is ANY_TENANT:
        return chosen
    if chosen is not ANY_TENANT and chosen != limited:
        raise ApiError(403, f"this API key may only use tenant {limited!r}")
    return limited


async def list_(request: web.Request) -> web.Response:
    params = query(request, ("type", "tenant", "since", "until"))
    problems = Problems()
    cursor, limit = paging(params, problems)
    since = query_time(params, "since", problems)
    until = query_time(params, "until", problems)
    problems.raise_if_any()
    tenant = tenant_filter(request, params)
    page = await state(request).store.list_events(
        event_type=params.get("type"),
        tenant=tenant,
        since=since,
        until=until,
        cursor=cursor,
        limit=limit,
    )
    return json_response(page_json([serialize.event(e) for e in page.data], page.next_cursor))


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/events", publish),
        web.post("/v1/events/batch", publish_batch),
        web.get("/v1/events", list_, allow_head=False),
        web.get("/v1/events/{event_id}", get, allow_head=False),
    ]
