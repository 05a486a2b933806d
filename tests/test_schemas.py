"""Event-type JSON Schemas: a type's schema and example through the API, the config file,
the CLI and the console; payloads validated at publish (single and batch) and for test
events; each schema compiled once. Real daemons and receivers on 127.0.0.1, real SQLite
files and a real PostgreSQL where the store is involved."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import Daemon, Receiver, wait_until
from tests.console_client import ConsoleClient
from tests.pg import BACKENDS, new_store
from tests.test_cli_client import cli, env_of, ok, ok_json
from tests.test_cli_config import EXIT_CONFIG, run
from webhookd import schemas
from webhookd.api import create_app
from webhookd.api.context import State
from webhookd.config import Config, EventTypeDecl
from webhookd.store.models import Conflict, NotFound

BOTH = pytest.mark.parametrize("backend", BACKENDS, indirect=True)
MakeDaemon = Callable[..., Awaitable[Daemon]]
MakeReceiver = Callable[..., Awaitable[Receiver]]

PAYMENT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["payment_id", "amount", "currency"],
    "properties": {
        "payment_id": {"type": "string", "minLength": 1},
        "amount": {"type": "integer", "minimum": 0},
        "currency": {"enum": ["EUR", "USD"]},
        "customer": {
            "type": "object",
            "required": ["id"],
            "properties": {"id": {"type": "string"}, "email": {"type": "string"}},
        },
    },
}
PAYMENT_EXAMPLE = {"payment_id": "pay_1", "amount": 1200, "currency": "EUR"}


def loc_msgs(r: Any) -> list[tuple[list[Any], str]]:
    assert r.status == 422, r
    return [(d["loc"], d["msg"]) for d in r.json["detail"]]


def locs(r: Any) -> list[list[Any]]:
    return [loc for loc, _ in loc_msgs(r)]


async def create_payment_type(d: Daemon, **extra: Any) -> dict[str, Any]:
    body = {"name": "payment.settled", "schema": PAYMENT_SCHEMA, "example": PAYMENT_EXAMPLE}
    r = await d.post("/v1/event-types", {**body, **extra})
    assert r.status == 201, r
    return r.json  # type: ignore[no-any-return]


# --- the API -------------------------------------------------------------------------------


@BOTH
async def test_a_type_with_a_schema_refuses_payloads_that_do_not_validate(
    make_daemon: MakeDaemon, backend: str
) -> None:
    d = await make_daemon()
    created = await create_payment_type(d, description="A payment settled.")
    assert created["schema"] == PAYMENT_SCHEMA and created["example"] == PAYMENT_EXAMPLE
    assert created["source"] == "api"

    # A valid payload is published; one that does not validate is a 422 pointing into it.
    assert (await d.publish("payment.settled", PAYMENT_EXAMPLE))["type"] == "payment.settled"
    r = await d.post(
        "/v1/events",
        {"type": "payment.settled", "payload": {**PAYMENT_EXAMPLE, "amount": -5}},
    )
    assert loc_msgs(r) == [(["body", "payload", "amount"], "-5 is less than the minimum of 0")]
    assert r.json["message"].startswith("payload.amount: ")
    r = await d.post(
        "/v1/events",
        {
            "type": "payment.settled",
            "payload": {"amount": "12", "currency": "GBP", "customer": {}},
        },
    )
    assert sorted(locs(r)) == sorted(
        [
            ["body", "payload", "payment_id"],
            ["body", "payload", "amount"],
            ["body", "payload", "currency"],
            ["body", "payload", "customer", "id"],
        ]
    )
    msgs = dict((tuple(loc), msg) for loc, msg in loc_msgs(r))
    assert msgs[("body", "payload", "payment_id")] == "field required by the event type's schema"
    assert "not of type" in msgs[("body", "payload", "amount")]

    # A batch with one invalid event is refused whole, naming the event's index.
    good = {"type": "payment.settled", "payload": PAYMENT_EXAMPLE}
    other = {"type": "call.completed", "payload": {"anything": True}}
    bad = {"type": "payment.settled", "payload": {**PAYMENT_EXAMPLE, "amount": 1.5}}
    r = await d.post("/v1/events/batch", {"events": [good, other, good, bad, good]})
    assert locs(r) == [["body", "events", 3, "payload", "amount"]]
    listed = (await d.get("/v1/events?type=payment.settled")).json["data"]
    assert len(listed) == 1  # the first single publish only: nothing of the batch
    r = await d.post("/v1/events/batch", {"events": [good, other, good]})
    assert r.status == 202, r

    # The schema and example outlive a restart (stored, and compiled again when loaded).
    await d.stop()
    await d.start()
    got = (await d.get("/v1/event-types/payment.settled")).json
    assert got["schema"] == PAYMENT_SCHEMA and got["example"] == PAYMENT_EXAMPLE
    r = await d.post("/v1/events", {"type": "payment.settled", "payload": {"amount": 1}})
    assert ["body", "payload", "payment_id"] in locs(r)


async def test_errors_are_capped_and_their_messages_short(daemon: Daemon) -> None:
    schema = {
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"type": "integer"}}},
        "additionalProperties": False,
    }
    r = await daemon.post("/v1/event-types", {"name": "bulk.thing", "schema": schema})
    assert r.status == 201, r
    payload = {"items": ["x" * 1000] * 50, "extra": 1}
    r = await daemon.post("/v1/events", {"type": "bulk.thing", "payload": payload})
    found = loc_msgs(r)
    assert len(found) == schemas.MAX_ERRORS
    assert all(len(msg) <= schemas.MAX_MSG_CHARS for _, msg in found)
    assert found[0] == (["body", "payload", "items", 0], found[0][1])
    assert "is not of type" in found[0][1]  # the end of a long message is kept


async def test_bad_schemas_and_examples_are_422_pointing_into_them(
    daemon: Daemon, receiver: Receiver
) -> None:
    async def create(**body: Any) -> Any:
        return await daemon.post("/v1/event-types", {"name": "order.created", **body})

    r = await create(schema={"type": "object", "properties": {"amount": {"type": "money"}}})
    [(loc, msg)] = loc_msgs(r)
    assert loc == ["body", "schema", "properties", "amount", "type"]
    assert "draft 2020-12" in msg
    r = await create(schema={"required": "amount"})
    assert locs(r) == [["body", "schema", "required"]]
    r = await create(schema={"$schema": "http://json-schema.org/draft-07/schema#"})
    assert locs(r) == [["body", "schema", "$schema"]]
    r = await create(schema=["not", "an", "object"])
    assert locs(r) == [["body", "schema"]]
    r = await create(schema={"pattern": "("})
    assert locs(r) == [["body", "schema", "pattern"]]

    r = await create(schema=PAYMENT_SCHEMA, example={**PAYMENT_EXAMPLE, "currency": "GBP"})
    assert locs(r) == [["body", "example", "currency"]]
    r = await create(schema=PAYMENT_SCHEMA, example=[1])
    assert locs(r) == [["body", "example"]]
    r = await create(example="text")
    assert locs(r) == [["body", "example"]]

    # A remote $ref is refused, and never fetched (the receiver here would see it).
    r = await create(schema={"properties": {"customer": {"$ref": receiver.url + "/customer.json"}}})
    [(loc, msg)] = loc_msgs(r)
    assert loc == ["body", "schema", "properties", "customer", "$ref"]
    assert "never fetches remote references" in msg
    assert receiver.received == []
    # A local $ref is fine.
    local = {
        "$defs": {"money": {"type": "integer", "minimum": 0}},
        "properties": {"amount": {"$ref": "#/$defs/money"}},
    }
    r = await create(schema=local, example={"amount": 3})
    assert r.status == 201, r
    r = await daemon.post("/v1/events", {"type": "order.created", "payload": {"amount": -1}})
    assert locs(r) == [["body", "payload", "amount"]]


async def test_get_patch_and_the_schema_alone(daemon: Daemon) -> None:
    await create_payment_type(daemon)
    r = await daemon.get("/v1/event-types/payment.settled/schema")
    assert r.status == 200 and r.headers["Content-Type"].startswith("application/schema+json")
    assert json.loads(r.body) == PAYMENT_SCHEMA
    listed = {t["name"]: t for t in (await daemon.get("/v1/event-types")).json["data"]}
    assert listed["payment.settled"]["schema"] == PAYMENT_SCHEMA
    assert listed["call.completed"]["schema"] is None

    # A schema the kept example does not validate against needs a new example with it.
    stricter = {**PAYMENT_SCHEMA, "properties": {**PAYMENT_SCHEMA["properties"]}}
    stricter["properties"]["amount"] = {"type": "integer", "minimum": 5000}
    r = await daemon.patch("/v1/event-types/payment.settled", {"schema": stricter})
    [(loc, msg)] = loc_msgs(r)
    assert loc == ["body", "schema"] and "amount" in msg and "example" in msg
    r = await daemon.patch(
        "/v1/event-types/payment.settled",
        {"schema": stricter, "example": {**PAYMENT_EXAMPLE, "amount": 100}},
    )
    assert locs(r) == [["body", "example", "amount"]]
    new_example = {**PAYMENT_EXAMPLE, "amount": 9000}
    r = await daemon.patch(
        "/v1/event-types/payment.settled",
        {"schema": stricter, "example": new_example, "description": "Settled."},
    )
    assert r.status == 200, r
    assert r.json["schema"] == stricter and r.json["example"] == new_example
    assert r.json["description"] == "Settled."
    r = await daemon.post("/v1/events", {"type": "payment.settled", "payload": PAYMENT_EXAMPLE})
    assert locs(r) == [["body", "payload", "amount"]]  # the new schema applies at once

    # schema null removes it: any object is accepted again, and /schema is a 404.
    r = await daemon.patch("/v1/event-types/payment.settled", {"schema": None})
    assert r.status == 200 and r.json["schema"] is None and r.json["example"] == new_example
    await daemon.publish("payment.settled", {"whatever": 1})
    r = await daemon.get("/v1/event-types/payment.settled/schema")
    assert r.status == 404 and "has no schema" in r.json["message"], r
    r = await daemon.patch("/v1/event-types/payment.settled", {"example": None, "color": 1})
    assert locs(r) == [["body", "color"]]

    assert (await daemon.get("/v1/event-types/nope")).status == 404
    assert (await daemon.get("/v1/event-types/nope/schema")).status == 404
    assert (await daemon.patch("/v1/event-types/nope", {})).status == 404
    r = await daemon.patch("/v1/event-types/webhookd.test", {"description": "x"})
    assert r.status == 409 and "built into webhookd" in r.json["message"], r
    r = await daemon.patch("/v1/event-types/call.completed", {"schema": {}})
    assert r.status == 409 and "config file" in r.json["message"], r


async def test_a_tenant_key_reads_the_schemas_but_changes_nothing(
    make_daemon: MakeDaemon,
) -> None:
    ops, tenant = "o" * 40, "t" * 40
    d = await make_daemon(
        {
            "api_keys": [
                {"name": "ops", "key": ops},
                {"name": "acme", "key": tenant, "tenant": "acme"},
            ]
        }
    )
    d.api_key = ops
    await create_payment_type(d)
    r = await d.get("/v1/event-types/payment.settled/schema", key=tenant)
    assert r.status == 200 and json.loads(r.body) == PAYMENT_SCHEMA
    r = await d.patch("/v1/event-types/payment.settled", {"schema": None}, key=tenant)
    assert r.status == 403, r
    r = await d.post("/v1/event-types", {"name": "x.y", "schema": {}}, key=tenant)
    assert r.status == 403, r
    # A tenant's publish is validated like any other.
    r = await d.post(
        "/v1/events", {"type": "payment.settled", "payload": {"amount": -1}}, key=tenant
    )
    assert ["body", "payload", "amount"] in locs(r)


# --- test events and trigger ------------------------------------------------------------


async def test_test_events_send_the_example_and_are_validated(
    daemon: Daemon, make_receiver: MakeReceiver
) -> None:
    rx = await make_receiver()
    await create_payment_type(daemon)
    ep = await daemon.endpoint(rx.url, events=["payment.settled"])
    r = await daemon.post(f"/v1/endpoints/{ep['id']}/test", {"event_type": "payment.settled"})
    assert r.status == 202, r
    [got] = await rx.wait_for(1)
    sent = orjson.loads(got.body)
    assert sent["type"] == "payment.settled" and sent["data"] == PAYMENT_EXAMPLE

    # A payload given is checked against the schema.
    r = await daemon.post(
        f"/v1/endpoints/{ep['id']}/test",
        {"event_type": "payment.settled", "payload": {**PAYMENT_EXAMPLE, "amount": -1}},
    )
    assert locs(r) == [["body", "payload", "amount"]]
    # A type with a schema and no example needs a payload.
    r = await daemon.patch("/v1/event-types/payment.settled", {"example": None})
    assert r.status == 200, r
    r = await daemon.post(f"/v1/endpoints/{ep['id']}/test", {"event_type": "payment.settled"})
    [(loc, msg)] = loc_msgs(r)
    assert loc == ["body", "payload"] and "no example" in msg
    # A type without a schema still gets the default test payload.
    ep2 = await daemon.endpoint(rx.url)
    r = await daemon.post(f"/v1/endpoints/{ep2['id']}/test", {"event_type": "call.completed"})
    assert r.status == 202, r
    await rx.wait_for(2)
    assert orjson.loads(rx.received[1].body)["data"] == {"message": "a test event from webhookd"}


async def test_trigger_publishes_the_types_example(
    daemon: Daemon, make_receiver: MakeReceiver
) -> None:
    rx = await make_receiver()
    await create_payment_type(daemon)
    await daemon.endpoint(rx.url, events=["payment.settled"])
    out = await ok(daemon, "trigger", "payment.settled")
    assert "published evt_" in out
    [got] = await rx.wait_for(1)
    assert orjson.loads(got.body)["data"] == PAYMENT_EXAMPLE


# --- the config file ---------------------------------------------------------------------


CONFIG_TYPES = [
    {
        "name": "call.completed",
        "description": "A call ended.",
        "schema": {
            "type": "object",
            "required": ["call_id", "duration_s"],
            "properties": {"call_id": {"type": "string"}, "duration_s": {"type": "number"}},
        },
        "example": {"call_id": "c_1", "duration_s": 42.5},
    }
]


@BOTH
async def test_config_declared_schemas(make_daemon: MakeDaemon, backend: str) -> None:
    d = await make_daemon({"event_types": CONFIG_TYPES})
    got = (await d.get("/v1/event-types/call.completed")).json
    assert got["source"] == "config"
    assert got["schema"] == CONFIG_TYPES[0]["schema"]
    assert got["example"] == CONFIG_TYPES[0]["example"]
    await d.publish("call.completed", {"call_id": "c_2", "duration_s": 1})
    r = await d.post("/v1/events", {"type": "call.completed", "payload": {"call_id": 7}})
    assert sorted(locs(r)) == [["body", "payload", "call_id"], ["body", "payload", "duration_s"]]
    r = await d.patch("/v1/event-types/call.completed", {"schema": None})
    assert r.status == 409 and "change it there and reload" in r.json["message"], r

    # A reload that drops the schema from the config applies it.
    d.config["event_types"] = [{"name": "call.completed", "description": "A call ended."}]
    d.write_config()
    d.signal(__import__("signal").SIGHUP)

    async def unschematized() -> bool:
        return (await d.get("/v1/event-types/call.completed")).json["schema"] is None

    await wait_until(unschematized, 10, "the reload")
    await d.publish("call.completed", {"call_id": 7})


def test_a_bad_schema_in_the_config_exits_78_naming_the_key(tmp_path: Path) -> None:
    bad = [
        {"name": "a.b", "schema": {"type": "object", "properties": {"n": {"type": "wat"}}}},
        {"name": "c.d", "schema": {"properties": {"n": {"minimum": 0}}}, "example": {"n": -1}},
        {"name": "e.f", "schema": {"$ref": "https://schemas.example.com/e.json"}},
        {"name": "g.h", "example": "not an object"},
    ]
    path = tmp_path / "w.yaml"
    path.write_text(json.dumps({"database": str(tmp_path / "w.db"), "event_types": bad}))
    for command in (["check-config", "-c", str(path)], ["serve", "-c", str(path)]):
        result = run(*command, cwd=tmp_path)
        assert result.returncode == EXIT_CONFIG, result
        err = result.stderr
        assert "event_types[0].schema.properties.n.type: not valid" in err, err
        assert "event_types[1].example.n: -1 is less than the minimum of 0" in err, err
        assert "event_types[2].schema.$ref: refers to https://schemas.example.com/e.json" in err
        assert "event_types[3].example: expected a JSON object" in err, err
    good = [{"name": "a.b", "schema": {"type": "object"}, "example": {"n": 1}}]
    path.write_text(json.dumps({"database": str(tmp_path / "w.db"), "event_types": good}))
    assert run("check-config", "-c", str(path), cwd=tmp_path).returncode == 0


# --- compiled once ----------------------------------------------------------------------


@pytest.fixture
async def app_url(backend: str, database: str) -> AsyncIterator[str]:
    """The real API application in this process (so that the compile counter is visible),
    on a real store, served on 127.0.0.1."""
    store = new_store(backend, database)
    await store.open()
    await store.sync_event_types([EventTypeDecl("call.completed", **_declared())])
    runner = web.AppRunner(create_app(State(config=Config(), store=store, starting=False)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await store.close()


def _declared() -> dict[str, Any]:
    return {"schema": CONFIG_TYPES[0]["schema"], "example": CONFIG_TYPES[0]["example"]}


@BOTH
async def test_each_schema_is_compiled_once(app_url: str, backend: str) -> None:
    async with aiohttp.ClientSession(app_url) as http:

        async def post(path: str, body: Any) -> int:
            async with http.post(path, json=body) as resp:
                return resp.status

        start = schemas.compile_count()
        body = {"name": "payment.settled", "schema": PAYMENT_SCHEMA, "example": PAYMENT_EXAMPLE}
        assert await post("/v1/event-types", body) == 201
        assert schemas.compile_count() == start + 1  # checked and compiled when created
        for n in range(30):
            payload = {**PAYMENT_EXAMPLE, "amount": n}
            assert await post("/v1/events", {"type": "payment.settled", "payload": payload}) == 202
            call = {"call_id": f"c{n}", "duration_s": n}
            assert await post("/v1/events", {"type": "call.completed", "payload": call}) == 202
        batch = [{"type": "payment.settled", "payload": PAYMENT_EXAMPLE}] * 200
        assert await post("/v1/events/batch", {"events": batch}) == 202
        assert await post("/v1/events", {"type": "payment.settled", "payload": {}}) == 422
        async with http.get("/v1/event-types") as resp:  # the catalog read again
            assert resp.status == 200
        assert await post("/v1/events", {"type": "call.completed", "payload": {}}) == 422
        # One for the created type, one for the config type (at its first publish).
        assert schemas.compile_count() == start + 2


# --- the store, on both backends ------------------------------------------------------------


@BOTH
async def test_the_store_keeps_schemas_and_examples(backend: str, database: str) -> None:
    store = new_store(backend, database)
    await store.open()
    try:
        await store.sync_event_types([EventTypeDecl("call.completed", "A call.", **_declared())])
        et = await store.create_event_type(
            "payment.settled", "Paid.", schema=PAYMENT_SCHEMA, example=PAYMENT_EXAMPLE
        )
        assert store.event_type("payment.settled") == et
        # An integer beyond 64 bits in an example stays exact.
        big = {"n": 2**70}
        changed = await store.update_event_type(
            "payment.settled", description="Settled.", schema=None, example=big
        )
        assert (changed.description, changed.schema, changed.example) == ("Settled.", None, big)
        with pytest.raises(Conflict, match="config file"):
            await store.update_event_type(
                "call.completed", description="", schema=None, example=None
            )
        with pytest.raises(Conflict, match="built into"):
            await store.update_event_type(
                "webhookd.test", description="", schema=None, example=None
            )
        with pytest.raises(NotFound):
            await store.update_event_type("nope", description="", schema=None, example=None)
    finally:
        await store.close()
    again = new_store(backend, database)
    await again.open()
    try:
        kept = {t.name: t for t in await again.list_event_types()}
        assert kept["payment.settled"].example == big and kept["payment.settled"].schema is None
        assert kept["call.completed"].schema == CONFIG_TYPES[0]["schema"]
        assert kept["call.completed"].source == "config"
        assert kept["webhookd.test"].schema is None
    finally:
        await again.close()


# --- CLI and console -------------------------------------------------------------------------


async def test_cli_create_get_update(daemon: Daemon, tmp_path: Path) -> None:
    schema_file, example_file = tmp_path / "schema.json", tmp_path / "example.json"
    schema_file.write_text(json.dumps(PAYMENT_SCHEMA))
    example_file.write_text(json.dumps(PAYMENT_EXAMPLE))
    out = await ok(
        daemon,
        "event-types",
        "create",
        "payment.settled",
        "--schema",
        str(schema_file),
        "--example",
        str(example_file),
    )
    assert "created event type payment.settled" in out
    shown = await ok(daemon, "event-types", "get", "payment.settled")
    assert '"minimum": 0' in shown and '"payment_id": "pay_1"' in shown
    listed = await ok(daemon, "event-types", "list")
    assert any(
        line.split()[:3] == ["payment.settled", "api", "yes"] for line in listed.splitlines()
    )

    example_file.write_text(json.dumps({**PAYMENT_EXAMPLE, "currency": "GBP"}))
    code, _, err = await cli(
        "event-types",
        "update",
        "payment.settled",
        "--example",
        str(example_file),
        env=env_of(daemon),
    )
    assert code == 1 and "example.currency" in err, err
    await ok(daemon, "event-types", "update", "payment.settled", "--schema", "none")
    doc = await ok_json(daemon, "event-types", "get", "payment.settled")
    assert doc["schema"] is None and doc["example"] == PAYMENT_EXAMPLE
    code, _, err = await cli("event-types", "update", "payment.settled", env=env_of(daemon))
    assert code != 0 and "nothing to update" in err


async def test_the_console_shows_schemas_and_examples(daemon: Daemon) -> None:
    await create_payment_type(daemon)
    r = await daemon.get("/console/event-types")
    assert r.status == 200, r
    page = r.body.decode()
    assert 'data-name="payment.settled"' in page and 'data-name="webhookd.test"' in page
    assert "&#34;minimum&#34;: 0" in page or "&quot;minimum&quot;: 0" in page
    assert "pay_1" in page
    assert 'href="/console/event-types"' in page  # in the navigation


async def test_the_consoles_test_event_sends_the_example_and_checks_a_payload(
    daemon: Daemon, make_receiver: MakeReceiver
) -> None:
    rx = await make_receiver()
    await create_payment_type(daemon)
    ep = await daemon.endpoint(rx.url, events=["payment.settled"])
    console = ConsoleClient(daemon.base)
    try:
        page = await console.get(f"/console/endpoints/{ep['id']}")
        form = {"event_type": "payment.settled", "payload": ""}
        r = await console.post(f"/console/endpoints/{ep['id']}/test", form, csrf=page.csrf())
        assert r.status == 303, r.text[:500]
        [got] = await rx.wait_for(1)
        assert orjson.loads(got.body)["data"] == PAYMENT_EXAMPLE
        form["payload"] = json.dumps({**PAYMENT_EXAMPLE, "amount": -3})
        r = await console.post(f"/console/endpoints/{ep['id']}/test", form, csrf=page.csrf())
        assert r.status == 422 and "payload.amount" in r.text, r.text[:500]
    finally:
        await console.close()
    assert len(rx.received) == 1


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_stored_schema_that_cannot_compile_is_a_422_not_a_500(
    backend: str, database: str
) -> None:
    """A schema put in the database by hand (or refused by a stricter validator release)
    makes publishes to its type a clear 422 naming the type, never a 500."""
    import sqlite3

    store = new_store(backend, database)
    await store.open()
    await store.sync_event_types([])
    await store.create_event_type("bad.schema", "")
    await store.close()
    with sqlite3.connect(database) as conn:
        conn.execute("UPDATE event_types SET schema=? WHERE name='bad.schema'", ('{"type": 12}',))
    store = new_store(backend, database)
    await store.open()
    runner = web.AppRunner(create_app(State(config=Config(), store=store, starting=False)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession(url) as http:
            body = {"type": "bad.schema", "payload": {"n": 1}}
            async with http.post("/v1/events", json=body) as resp:
                assert resp.status == 422, await resp.text()
                (entry,) = (await resp.json())["detail"]
            assert entry["loc"] == ["body", "type"]
            assert "PATCH /v1/event-types/bad.schema" in entry["msg"]
            batch = {"events": [{"type": "call.x", "payload": {}}, body]}
            async with http.post("/v1/events/batch", json=batch) as resp:
                assert resp.status == 422
                assert ["body", "events", 1, "type"] in [
                    d["loc"] for d in (await resp.json())["detail"]
                ]
    finally:
        await runner.cleanup()
        await store.close()
