"""The event-type catalog: list, create, read, change and delete types, and serve a
type's JSON Schema alone; and the check of payloads against their type's schema, for
publishing and test events (webhookd.schemas does the JSON Schema work).

Built-in types and those the config declares are changed only by a new version or the
config file: PATCH and DELETE answer 409 for them. The catalog is shared by every tenant:
a tenant-scoped key reads it and gets 403 on any change.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from webhookd import jsonio
from webhookd.api import serialize
from webhookd.api.context import ANY_TENANT, State, scope, state
from webhookd.api.errors import ApiError, json_response
from webhookd.api.validate import (
    Problems,
    page_json,
    paging,
    query,
    read_json,
    require_object,
    string,
    unknown_fields,
)
from webhookd.config import EVENT_TYPE_RE
from webhookd.schemas import SchemaError, Validator, Validators, compile_schema, payload_problems
from webhookd.store.codec import decode_name_cursor, encode_name_cursor
from webhookd.store.interface import EventType, NotFound
from webhookd.store.records import check_changeable

Loc = tuple[str | int, ...]
# A type's body: its schema and example (the example at most limits.max_payload_bytes).
BODY_LIMIT = 1 << 20
SCHEMA_MEDIA_TYPE = "application/schema+json"
DEFAULT_TEST_PAYLOAD = {"message": "a test event from webhookd"}
_VALIDATORS = "schema_validators"


def validators(st: State) -> Validators:
    """The compiled schemas of this API's catalog."""
    held: Validators | None = st.extra.get(_VALIDATORS)
    if held is None:
        held = st.extra[_VALIDATORS] = Validators()
    return held


def check_payload(st: State, event_type: str, payload: Any, loc: Loc, problems: Problems) -> bool:
    """Whether `payload` validates against the schema of its (catalogued) type; if not,
    one problem per error, under `loc`."""
    try:
        validator = validators(st).for_type(st.store.event_type(event_type))
    except SchemaError as exc:
        # A stored schema this build cannot compile (edited in the database, or refused
        # by a stricter validator release): a clear refusal, never a 500.
        problems.add(
            (*loc[:-1], "type"),
            f"the stored schema of event type {event_type} cannot be used ({exc}); "
            f"replace it with PATCH /v1/event-types/{event_type}",
        )
        return False
    if validator is None:
        return True
    found = payload_problems(validator, payload)
    for path, msg in found:
        problems.add((*loc, *path), msg)
    return not found


def test_payload(st: State, event_type: Any, body: dict[str, Any], problems: Problems) -> Any:
    """The payload of POST /v1/endpoints/{id}/test: the body's, else the type's example,
    else DEFAULT_TEST_PAYLOAD; checked against the type's schema."""
    et = st.store.event_type(event_type) if isinstance(event_type, str) else None
    if "payload" in body:
        payload = body["payload"]
        if et is not None and isinstance(payload, dict):
            check_payload(st, et.name, payload, ("body", "payload"), problems)
        return payload
    if et is not None and et.example is not None:
        return et.example
    validator = validators(st).for_type(et)
    if validator is not None and payload_problems(validator, DEFAULT_TEST_PAYLOAD):
        assert et is not None
        problems.add(
            ("body", "payload"),
            f"field required: event type {et.name} has a schema and no example to send; give "
            "a payload, or add an example to the type",
        )
    return DEFAULT_TEST_PAYLOAD


# --- the handlers -------------------------------------------------------------------------


async def list_types(request: web.Request) -> web.Response:
    """Sorted by name; the cursor is the last name of the previous page."""
    params = query(request, ())
    problems = Problems()
    _, limit = paging({k: v for k, v in params.items() if k == "limit"}, problems)
    after = None
    if params.get("cursor"):
        try:
            after = decode_name_cursor(params["cursor"])
        except ValueError as exc:
            problems.add(("query", "cursor"), str(exc))
    problems.raise_if_any()
    catalog = await state(request).store.list_event_types()
    types = [t for t in catalog if after is None or t.name > after]
    page, more = types[:limit], len(types) > limit
    nxt = encode_name_cursor(page[-1].name) if more else None
    return json_response(page_json([serialize.event_type(t) for t in page], nxt))


def _may_change_catalog(request: web.Request) -> None:
    """The catalog is shared by every tenant: a tenant-scoped key only reads it."""
    limited = scope(request)
    if limited is not ANY_TENANT:
        raise ApiError(
            403,
            f"the event-type catalog is shared by every tenant; this API key is limited to "
            f"tenant {limited!r} and may only read it",
        )


async def _find(st: State, name: str) -> EventType:
    """The type as stored now (the catalog read again where several daemons share it)."""
    for et in await st.store.list_event_types():
        if et.name == name:
            return et
    raise NotFound(f"no event type named {name}")


async def create_type(request: web.Request) -> web.Response:
    _may_change_catalog(request)
    st = state(request)
    body = require_object(await read_json(request, BODY_LIMIT))
    problems = Problems()
    unknown_fields(body, ("name", "description", "schema", "example"), problems)
    name: Any = body.get("name")
    if "name" not in body:
        problems.add(("body", "name"), "field required")
    elif string(name, ("body", "name"), problems, max_len=200, min_len=1) is not None and (
        not EVENT_TYPE_RE.fullmatch(name)
    ):
        problems.add(("body", "name"), "expected dot-separated segments of [a-zA-Z0-9_-]")
    description = body.get("description", "")
    string(description, ("body", "description"), problems)
    schema, example, validator = _schema_fields(st, body, None, problems)
    problems.raise_if_any()
    et = await st.store.create_event_type(name, description, schema=schema, example=example)
    validators(st).remember(name, et.schema, validator)
    return json_response(serialize.event_type(et), 201)


async def get_type(request: web.Request) -> web.Response:
    et = await _find(state(request), request.match_info["name"])
    return json_response(serialize.event_type(et))


async def get_schema(request: web.Request) -> web.Response:
    """The type's schema alone, as application/schema+json, for receivers' tooling."""
    et = await _find(state(request), request.match_info["name"])
    if et.schema is None:
        raise ApiError(
            404,
            f"event type {et.name} has no schema; add one with PATCH /v1/event-types/{et.name} "
            '{"schema": {...}}',
        )
    return web.Response(body=jsonio.dumps(et.schema), content_type=SCHEMA_MEDIA_TYPE)


async def patch_type(request: web.Request) -> web.Response:
    """Change an API-created type's description, schema or example (schema or example
    null removes it); the example must validate against the schema the type ends with."""
    _may_change_catalog(request)
    st = state(request)
    body = require_object(await read_json(request, BODY_LIMIT))
    current = await _find(st, request.match_info["name"])
    check_changeable(current.name, current.source, "changed")
    problems = Problems()
    unknown_fields(body, ("description", "schema", "example"), problems)
    description = body.get("description", current.description)
    string(description, ("body", "description"), problems)
    schema, example, validator = _schema_fields(st, body, current, problems)
    problems.raise_if_any()
    et = await st.store.update_event_type(
        current.name, description=description, schema=schema, example=example
    )
    validators(st).remember(et.name, et.schema, validator)
    return json_response(serialize.event_type(et))


async def delete_type(request: web.Request) -> web.Response:
    _may_change_catalog(request)
    st = state(request)
    name = request.match_info["name"]
    await st.store.delete_event_type(name)
    validators(st).forget(name)
    return web.Response(status=204)


# --- a type's schema and example ---------------------------------------------------------


def _schema_fields(
    st: State, body: dict[str, Any], current: EventType | None, problems: Problems
) -> tuple[Any, Any, Validator | None]:
    """The schema and example a type will have after this body (the current ones where
    it does not give them), and the schema compiled; problems point into the body."""
    start = len(problems.items)
    schema = body.get("schema", current.schema if current else None)
    example = body.get("example", current.example if current else None)
    validator = None
    if "schema" in body:
        validator = _compiled(schema, problems)
    elif current is not None:
        validator = validators(st).for_type(current)
    if "example" in body and example is not None:
        _check_example(st, example, problems)
    if validator is None or len(problems.items) > start or not isinstance(example, dict):
        return schema, example, validator
    found = payload_problems(validator, example)
    if "example" in body:
        for path, msg in found:
            problems.add(("body", "example", *path), msg)
    elif found:
        path, msg = found[0]
        where = ".".join(str(p) for p in path) or "(the whole example)"
        problems.add(
            ("body", "schema"),
            f"the type's example does not validate against this schema ({where}: {msg}); "
            'send a new example with it, or "example": null',
        )
    return schema, example, validator


def _compiled(schema: Any, problems: Problems) -> Validator | None:
    """The given schema compiled (None: no schema, or a problem added)."""
    if schema is None or not _storable(schema, ("body", "schema"), problems):
        return None
    try:
        return compile_schema(schema)
    except SchemaError as exc:
        problems.add(("body", "schema", *exc.path), exc.message)
        return None


def _check_example(st: State, example: Any, problems: Problems) -> None:
    if not isinstance(example, dict):
        problems.add(("body", "example"), "expected a JSON object (an event payload)")
    elif _storable(example, ("body", "example"), problems):
        size = len(jsonio.dumps(example))
        limit = st.config.limits.max_payload_bytes
        if size > limit:
            problems.add(
                ("body", "example"),
                f"is {size} bytes; a payload is at most {limit} (limits.max_payload_bytes)",
            )


def _storable(value: Any, loc: Loc, problems: Problems) -> bool:
    """Whether a value can be stored and sent as JSON (jsonio's limits)."""
    try:
        jsonio.dump_payload(value)
    except jsonio.JSONError as exc:
        problems.add((*loc, *exc.path), str(exc))
        return False
    return True


def routes() -> list[web.RouteDef]:
    return [
        web.get("/v1/event-types", list_types, allow_head=False),
        web.post("/v1/event-types", create_type),
        web.get("/v1/event-types/{name}", get_type, allow_head=False),
        web.patch("/v1/event-types/{name}", patch_type),
        web.delete("/v1/event-types/{name}", delete_type),
        web.get("/v1/event-types/{name}/schema", get_schema, allow_head=False),
    ]
