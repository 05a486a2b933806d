"""Payload erasure (DELETE /v1/events/{id}/payload) and payload retention
(retention.payload_days), on both backends: through real daemons and receivers, the
stores themselves, and the database's own files (SQLite: the bytes of the .db and -wal
files; PostgreSQL: the table and its TOAST relation, before and after VACUUM)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.conftest import Daemon, Receiver, new_event, wait_until
from tests.console_client import ConsoleClient
from tests.pg import BACKENDS
from webhookd import retention as retention_module
from webhookd.config import ConfigError, config_from_mapping
from webhookd.retention import Retention
from webhookd.store.models import Conflict
from webhookd.timefmt import now_ms, use_clock

BOTH = pytest.mark.parametrize("backend", BACKENDS, indirect=True)
MakeDaemon = Callable[..., Awaitable[Daemon]]
MakeReceiver = Callable[..., Awaitable[Receiver]]
ADMIN_KEY = "admin-key-" + "a" * 32
ACME_KEY = "acme-key-" + "b" * 32
GLOBEX_KEY = "globex-key-" + "c" * 32
KEYS = {
    "api_keys": [
        {"name": "admin", "key": ADMIN_KEY},
        {"name": "acme", "key": ACME_KEY, "tenant": "acme"},
        {"name": "globex", "key": GLOBEX_KEY, "tenant": "globex"},
    ]
}
DAY_MS = 86_400_000


def marker() -> str:
    """A string found nowhere but in the payload it is put in."""
    return f"ERASE-ME-{uuid.uuid4().hex}"


async def stored_copies(backend: str, database: str, text: str) -> int:
    """Where the database keeps `text`. SQLite: occurrences in the bytes of the database
    file and its WAL. PostgreSQL: rows of events, deliveries and attempts, and chunks of
    the events' TOAST relation, whose data holds it (what SQL can see)."""
    if backend == "sqlite":
        data = b"".join(
            Path(database + suffix).read_bytes()
            for suffix in ("", "-wal")
            if Path(database + suffix).exists()
        )
        return data.count(text.encode())
    import psycopg

    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        total = 0
        for table in ("events", "deliveries", "attempts"):
            # A row as text shows its bytea columns (payload, response_body) in hex.
            cur = await conn.execute(
                f"SELECT count(*) FROM {table} t WHERE position(%s in t::text) > 0 "  # noqa: S608
                "OR position(%s in t::text) > 0",
                (text, text.encode().hex()),
            )
            total += (await cur.fetchone() or (0,))[0]
        cur = await conn.execute(
            "SELECT reltoastrelid::regclass::text FROM pg_class WHERE relname = 'events'"
        )
        toast = (await cur.fetchone() or ("",))[0]
        cur = await conn.execute(
            f"SELECT count(*) FROM {toast} WHERE position(%s::bytea in chunk_data) > 0",  # noqa: S608
            (text.encode(),),
        )
        return total + (await cur.fetchone() or (0,))[0]


async def keyed_daemon(make_daemon: MakeDaemon, config: dict[str, Any] | None = None) -> Daemon:
    d = await make_daemon({**KEYS, **(config or {})})
    d.api_key = ADMIN_KEY
    return d


# --- end to end -----------------------------------------------------------------------------


@BOTH
async def test_erasing_a_payload_keeps_the_event_cancels_what_is_unsent_and_removes_the_bytes(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver, backend: str, database: str
) -> None:
    d = await keyed_daemon(make_daemon)
    live_rx, paused_rx = await make_receiver(), await make_receiver()
    live = await d.endpoint(live_rx.url, tenant="acme")
    # A paused endpoint keeps its delivery pending: what erasure must cancel.
    paused = await d.endpoint(paused_rx.url, tenant="acme", paused=True)
    secret = marker()
    ev = await d.publish(payload={"note": secret}, tenant="acme")
    [sent] = await live_rx.wait_for(1)
    assert secret.encode() in sent.body
    deliveries = (await d.get(f"/v1/deliveries?event_id={ev['id']}")).json["data"]
    by_endpoint = {x["endpoint_id"]: x["id"] for x in deliveries}
    await d.wait_status(by_endpoint[live["id"]], "delivered")
    assert await stored_copies(backend, database, secret) > 0

    # Another tenant's key does not see it: 404, and nothing changes.
    r = await d.delete(f"/v1/events/{ev['id']}/payload", key=GLOBEX_KEY)
    assert r.status == 404 and r.json["error"] == "not_found", r
    r = await d.delete(f"/v1/events/{ev['id']}/payload?tenant=acme", key=GLOBEX_KEY)
    assert r.status == 403, r
    assert (await d.get(f"/v1/events/{ev['id']}")).json["payload"] == {"note": secret}

    r = await d.delete(f"/v1/events/{ev['id']}/payload", key=ACME_KEY)
    assert r.status == 204 and r.body == b"", r
    got = (await d.get(f"/v1/events/{ev['id']}", key=ACME_KEY)).json
    assert got["payload"] is None and got["payload_erased_at"] is not None
    assert got["id"] == ev["id"] and got["type"] == "call.completed"
    status = {x["endpoint_id"]: x["status"] for x in got["deliveries"]}
    assert status == {live["id"]: "delivered", paused["id"]: "cancelled"}
    [listed] = (await d.get("/v1/events?tenant=acme")).json["data"]
    assert listed["payload"] is None
    assert listed["payload_erased_at"] == got["payload_erased_at"]
    # Idempotent: 204 again, the first erasure's time kept.
    r = await d.delete(f"/v1/events/{ev['id']}/payload")
    assert r.status == 204, r
    again = (await d.get(f"/v1/events/{ev['id']}")).json
    assert again["payload_erased_at"] == got["payload_erased_at"]
    # The attempt stays in the log.
    delivered = (await d.get(f"/v1/deliveries/{by_endpoint[live['id']]}")).json
    assert len(delivered["attempts"]) == 1 and delivered["attempts"][0]["status_code"] == 200
    # Nothing can send an empty body instead: retry and recover are refused.
    for delivery_id in by_endpoint.values():
        r = await d.post(f"/v1/deliveries/{delivery_id}/retry")
        assert r.status == 409 and "erased" in r.json["message"], r
    r = await d.post(f"/v1/endpoints/{live['id']}/recover", {"since": ev["created_at"]})
    assert r.status == 202 and r.json == {"requeued": 0}, r  # delivered: nothing to recover

    # The bytes are gone from storage, not only from the answers.
    assert await stored_copies(backend, database, secret) == 0

    # Resumed, the paused endpoint gets the next event and never the erased one.
    r = await d.patch(f"/v1/endpoints/{paused['id']}", {"paused": False})
    assert r.status == 200, r
    after = await d.publish(payload={"n": 1}, tenant="acme")
    await paused_rx.wait_for(1)
    await live_rx.wait_for(2)
    assert paused_rx.event_ids() == [after["id"]]

    r = await d.delete("/v1/events/evt_nonexistent/payload")
    assert r.status == 404, r


@BOTH
async def test_recover_leaves_erased_events_and_says_so_when_they_are_all_it_found(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver, backend: str
) -> None:
    d = await keyed_daemon(make_daemon, {"delivery": {"retry_schedule_s": []}})
    rx = await make_receiver(default=500)
    ep = await d.endpoint(rx.url)
    first = await d.publish(payload={"n": 1})
    second = await d.publish(payload={"n": 2})
    await rx.wait_for(2)
    for ev in (first, second):
        [dl] = (await d.get(f"/v1/deliveries?event_id={ev['id']}")).json["data"]
        await d.wait_status(dl["id"], "failed")
    assert (await d.delete(f"/v1/events/{first['id']}/payload")).status == 204
    rx.default = 200
    r = await d.post(f"/v1/endpoints/{ep['id']}/recover", {"since": first["created_at"]})
    assert r.status == 202 and r.json == {"requeued": 1}, r
    await rx.wait_for(3)
    assert rx.event_ids()[2] == second["id"]
    [dl] = (await d.get(f"/v1/deliveries?event_id={first['id']}")).json["data"]
    assert dl["status"] == "failed"
    # Now only the erased one is left to recover: a 409 that says why.
    await d.wait_status(
        (await d.get(f"/v1/deliveries?event_id={second['id']}")).json["data"][0]["id"], "delivered"
    )
    r = await d.post(f"/v1/endpoints/{ep['id']}/recover", {"since": first["created_at"]})
    assert r.status == 409 and "erased" in r.json["message"], r


@BOTH
async def test_a_delivery_claimed_and_waiting_is_not_sent_once_its_payload_is_erased(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver, backend: str
) -> None:
    """The endpoint takes one request at a time and the first hangs: the second event's
    delivery waits in the dispatcher (on SQLite, claimed ahead, in memory with its
    payload). Erasing that payload must keep it from being sent when the slot frees."""
    gate = asyncio.Event()

    async def hold_first(request: web.Request, body: bytes) -> web.Response:
        if len(rx.received) == 1:
            await gate.wait()
        return web.Response(text="ok")

    d = await keyed_daemon(make_daemon)
    rx = await make_receiver(responder=hold_first)
    await d.endpoint(rx.url, max_in_flight=1)
    first = await d.publish(payload={"n": 1})
    await rx.wait_for(1)
    secret = marker()
    second = await d.publish(payload={"note": secret})
    [dl] = (await d.get(f"/v1/deliveries?event_id={second['id']}")).json["data"]
    assert (await d.delete(f"/v1/events/{second['id']}/payload")).status == 204
    assert await d.delivery_status(dl["id"]) == "cancelled"
    gate.set()
    third = await d.publish(payload={"n": 3})
    await rx.wait_for(2)
    await wait_until(lambda: third["id"] in rx.event_ids(), 10, "the third event")
    assert rx.event_ids() == [first["id"], third["id"]]
    assert not any(secret.encode() in r.body for r in rx.received)


# --- the stores -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 40_000])
async def test_sqlite_file_and_wal_keep_no_byte_of_an_erased_payload(
    store: Any, database: str, size: int
) -> None:
    """Small (in the row's page) and large (in overflow pages) payloads: present in the
    files before, absent from the .db and the -wal after (secure_delete and the TRUNCATE
    checkpoint), while the other events' payloads stay."""
    secret, kept = marker(), marker()
    pad = os.urandom(size // 2).hex()
    [r] = await store.publish([new_event(payload=orjson.dumps({"s": secret, "pad": pad}))])
    [other] = await store.publish([new_event(payload=orjson.dumps({"k": kept, "pad": pad}))])
    await store._checkpoints.run()  # in the .db file, not only in the WAL
    assert await stored_copies("sqlite", database, secret) > 0
    erased = await store.erase_payload(r.event.id)
    assert erased.payload_erased_at is not None and erased.payload_json == b""
    assert await stored_copies("sqlite", database, secret) == 0
    assert Path(database + "-wal").stat().st_size == 0
    assert await stored_copies("sqlite", database, kept) > 0
    event, _ = await store.get_event(other.event.id)
    assert orjson.loads(event.payload_json)["k"] == kept


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_postgres_table_and_toast_hold_no_erased_payload_after_vacuum(
    store: Any, database: str
) -> None:
    """A large payload (TOASTed, incompressible) and a small one (inline): after the
    erasure no row version SQL can read holds them, and after VACUUM no tuple on the
    table's or the TOAST relation's pages does (pageinspect), while a kept payload is
    still there."""
    import psycopg

    secrets = [marker(), marker()]
    kept = marker()
    events = []
    for secret, size in zip(secrets, (64, 40_000), strict=True):
        pad = os.urandom(size // 2).hex()
        [r] = await store.publish([new_event(payload=orjson.dumps({"s": secret, "pad": pad}))])
        events.append(r.event.id)
    await store.publish([new_event(payload=orjson.dumps({"k": kept}))])
    for secret in secrets:
        assert await stored_copies("postgres", database, secret) > 0
    for event_id in events:
        await store.erase_payload(event_id)
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        for secret in secrets:
            assert await stored_copies("postgres", database, secret) == 0
        await conn.execute("VACUUM events")
        for secret in secrets:
            assert await _tuples_holding(conn, secret) == 0
        assert await _tuples_holding(conn, kept) == 1


async def _tuples_holding(conn: Any, text: str) -> int:
    """Tuples (live or dead) on the pages of events and of its TOAST relation whose data
    holds `text`, read with pageinspect."""
    total = 0
    cur = await conn.execute(
        "SELECT 'events', reltoastrelid::regclass::text FROM pg_class WHERE relname = 'events'"
    )
    for rel in await cur.fetchone():
        cur = await conn.execute(
            "SELECT count(*) FROM generate_series(0, "
            "pg_relation_size(%s::regclass) / current_setting('block_size')::int - 1) b, "
            "heap_page_items(get_raw_page(%s, b::int)) i "
            "WHERE position(%s::bytea in i.t_data) > 0",
            (rel, rel, text.encode()),
        )
        total += (await cur.fetchone())[0]
    return total


@BOTH
async def test_retention_erases_old_payloads_in_batches_and_keeps_the_unfinished(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention_module, "BATCH_EVENTS", 3)
    await store.create_endpoint(
        {
            "url": "https://example.com/off",
            "secret": "whsec_a",
            "events": ["order.paid"],
            "active": False,
        }
    )
    waiting_ep = await store.create_endpoint(
        {"url": "https://example.com/on", "secret": "whsec_b", "events": ["order.created"]}
    )
    start = now_ms()
    clock = [start - 10 * DAY_MS]
    finished, waiting = [], None
    with use_clock(lambda: clock[0]):
        for i in range(7):
            [r] = await store.publish([new_event(i, "order.paid")])  # skipped: finished
            finished.append(r.event.id)
            clock[0] += 1000
            if i == 2:
                [waiting] = await store.publish([new_event(99, "order.created")])  # pending
    [young] = await store.publish([new_event(100, "order.paid")])
    retention = Retention(store, lambda: 30.0, payload_days=lambda: 5.0)
    assert await retention.purge_once() == 0
    assert await retention.erase_once() == 7
    for event_id in finished:
        event, _ = await store.get_event(event_id)
        assert event.payload_erased_at is not None and event.payload_json == b""
    event, [dl] = await store.get_event(waiting.event.id)
    assert event.payload_erased_at is None and dl.status == "pending"  # still trying
    event, _ = await store.get_event(young.event.id)
    assert event.payload_erased_at is None
    assert await retention.erase_once() == 0
    # Once its delivery is over (cancelled with its endpoint), the next pass erases it:
    # the sweep went on from the event it kept, not from where it stopped.
    await store.delete_endpoint(waiting_ep.id)
    assert await retention.erase_once() == 1
    event, _ = await store.get_event(waiting.event.id)
    assert event.payload_erased_at is not None
    assert retention.erased_total == 8
    # payload_days equal to days: the purge is all there is.
    same = Retention(store, lambda: 5.0, payload_days=lambda: 5.0)
    assert await same.erase_once() == 0


@BOTH
async def test_a_store_refuses_to_retry_a_delivery_of_an_erased_event(store: Any) -> None:
    await store.create_endpoint({"url": "https://example.com/h", "secret": "whsec_x"})
    [r] = await store.publish([new_event()])
    [dl_id] = r.delivery_ids
    await store.erase_payload(r.event.id)
    dl, _ = await store.get_delivery(dl_id)
    assert dl.status == "cancelled"
    with pytest.raises(Conflict, match="erased"):
        await store.retry_delivery(dl_id)


async def test_other_daemons_hear_which_deliveries_an_erasure_cancelled(pg_dsn: str) -> None:
    """On a shared PostgreSQL database, the daemon that erases tells the others which
    deliveries it cancelled, so one of theirs claimed and waiting is not sent."""
    from tests.test_pg_store import opened

    class Heard:
        def __init__(self) -> None:
            self.cancelled: list[tuple[str, str]] = []

        def due(self, items: Any) -> None:
            pass

        def endpoint_changed(self, endpoint_id: str) -> None:
            pass

        def endpoint_deleted(self, endpoint_id: str) -> None:
            pass

        def deliveries_cancelled(self, items: Any) -> None:
            self.cancelled.extend(items)

    async with opened(pg_dsn) as a, opened(pg_dsn) as b:
        heard_a, heard_b = Heard(), Heard()
        a.subscribe(heard_a)
        b.subscribe(heard_b)
        await a.sync_event_types([])
        ep = await a.create_endpoint({"url": "https://example.com/h", "secret": "whsec_x"})
        [r] = await a.publish([new_event()])
        await a.erase_payload(r.event.id)
        expected = [(ep.id, r.delivery_ids[0])]
        assert heard_a.cancelled == expected  # its own: told directly, once
        await wait_until(lambda: heard_b.cancelled == expected, 10, "b to hear of it")
        assert heard_a.cancelled == expected


# --- configuration, console, command line ---------------------------------------------------


def test_payload_days_defaults_to_days_and_may_not_exceed_it() -> None:
    c = config_from_mapping({"retention": {"days": 10}})
    assert c.retention.payload_days is None and c.retention.payload_window_days == 10
    c = config_from_mapping({"retention": {"days": 10, "payload_days": 2.5}})
    assert c.retention.payload_window_days == 2.5
    for bad in (11, 0, -1, "7", True):
        with pytest.raises(ConfigError) as info:
            config_from_mapping({"retention": {"days": 10, "payload_days": bad}})
        assert info.value.problems == [
            f"retention.payload_days: expected a number > 0 and <= retention.days (10), got {bad!r}"
        ]


async def test_the_console_erases_after_a_confirmation_and_the_portal_only_shows_it(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver
) -> None:
    d = await keyed_daemon(make_daemon)
    rx = await make_receiver()
    await d.endpoint(rx.url, tenant="acme")
    secret = marker()
    ev = await d.publish(payload={"note": secret}, tenant="acme")
    [dl] = (await d.get(f"/v1/deliveries?event_id={ev['id']}")).json["data"]
    await d.wait_status(dl["id"], "delivered")
    link = (await d.post("/v1/portal-links", {"tenant": "acme"})).json
    ops, tenant = ConsoleClient(d.base), ConsoleClient(d.base)
    try:
        assert (await ops.login(ADMIN_KEY)).status == 303
        page = await ops.get(f"/console/events/{ev['id']}")
        assert secret in page.text and 'data-test="erase-payload"' in page.text
        # The button is a plain GET of a confirmation page; that page's form erases.
        confirm = await ops.get(f"/console/events/{ev['id']}/erase-payload")
        assert confirm.status == 200 and 'data-test="erase-confirm"' in confirm.text
        assert (await d.get(f"/v1/events/{ev['id']}")).json["payload_erased_at"] is None
        stale = await ops.post(f"/console/events/{ev['id']}/erase-payload", csrf="0" * 64)
        assert stale.status == 403
        r = await ops.post(f"/console/events/{ev['id']}/erase-payload", csrf=confirm.csrf())
        assert r.status == 303 and r.headers["Location"] == f"/console/events/{ev['id']}"
        page = await ops.get(f"/console/events/{ev['id']}")
        erased_at = (await d.get(f"/v1/events/{ev['id']}")).json["payload_erased_at"]
        assert f"Payload erased at {erased_at}" in page.text and secret not in page.text
        assert 'data-test="erase-payload"' not in page.text
        # The delivery page cannot show what was sent any more, and says why.
        page = await ops.get(f"/console/deliveries/{dl['id']}")
        assert page.status == 200 and "the payload was erased at" in page.text

        other = await d.publish(payload={"n": 2}, tenant="acme")
        path = link["url"].split("://", 1)[1].split("/", 1)[1]
        assert (await tenant.get("/" + path)).status == 303
        page = await tenant.get(f"/portal/events/{ev['id']}")
        assert page.status == 200 and "Payload erased at" in page.text
        page = await tenant.get(f"/portal/events/{other['id']}")
        assert page.status == 200 and 'data-test="erase-payload"' not in page.text
        r = await tenant.get(f"/portal/events/{other['id']}/erase-payload")
        assert r.status == 403
        r = await tenant.post(f"/portal/events/{other['id']}/erase-payload", csrf=page.csrf())
        assert r.status == 403
        assert (await d.get(f"/v1/events/{other['id']}")).json["payload"] == {"n": 2}
    finally:
        await ops.close()
        await tenant.close()


async def test_the_command_line_erases_a_payload(make_daemon: MakeDaemon) -> None:
    from tests.test_cli_client import cli

    d = await make_daemon()
    ev = await d.publish(payload={"n": 1})
    env = {"WEBHOOKD_URL": d.base}
    code, out, err = await cli("events", "erase-payload", ev["id"], env=env)
    assert (code, out.strip(), err) == (0, f"erased the payload of event {ev['id']}", "")
    shown = (await d.get(f"/v1/events/{ev['id']}")).json
    assert shown["payload"] is None and shown["payload_erased_at"] is not None
    code, out, err = await cli("events", "erase-payload", "evt_missing", env=env)
    assert code == 1 and "evt_missing" in err, (code, out, err)
