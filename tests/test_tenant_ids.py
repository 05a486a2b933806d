"""Event ids are scoped to the tenant: one tenant's use of an id is invisible to another and
never conflicts with it (single publish, the Idempotency-Key header, batches), the admin
key's lookups of a shared id, and the upgrade of a database whose ids were global."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Daemon, Receiver
from webhookd.store.codec import body_hash
from webhookd.store.sqlite.migrations import MIGRATIONS

MakeDaemon = Callable[..., Awaitable[Daemon]]
MakeReceiver = Callable[..., Awaitable[Receiver]]

ADMIN = "admin-key-" + "a" * 30
ACME = "acme-key-" + "b" * 30
GLOBEX = "globex-key-" + "c" * 30
KEYS = [
    {"name": "admin", "key": ADMIN},
    {"name": "acme", "key": ACME, "tenant": "acme"},
    {"name": "globex", "key": GLOBEX, "tenant": "globex"},
]
ID = "order-1001"


class Tenants:
    """A daemon with an admin key and two tenants' keys, each tenant with an endpoint."""

    def __init__(self, d: Daemon, acme: Receiver, globex: Receiver) -> None:
        self.d, self.acme, self.globex = d, acme, globex

    async def publish(self, key: str, body: dict[str, Any], **kw: Any) -> Any:
        return await self.d.post("/v1/events", {"type": "call.completed", **body}, key=key, **kw)


@pytest.fixture
async def tenants(make_daemon: MakeDaemon, make_receiver: MakeReceiver) -> Tenants:
    d = await make_daemon({"api_keys": KEYS})
    d.api_key = ADMIN
    acme, globex = await make_receiver(), await make_receiver()
    for key, r in ((ACME, acme), (GLOBEX, globex)):
        made = await d.post("/v1/endpoints", {"url": r.url}, key=key)
        assert made.status == 201, made
    return Tenants(d, acme, globex)


async def delivered_once(r: Receiver, tenant: str, payload: Any) -> None:
    """`r` got exactly one request: the event `order-1001` of `tenant` with `payload`."""
    [got] = await r.wait_for(1)
    assert got.headers["webhook-id"] == ID
    body = json.loads(got.body)
    assert (body["id"], body["tenant"], body["data"]) == (ID, tenant, payload)


async def test_two_tenants_each_have_their_own_order_1001(tenants: Tenants) -> None:
    d = tenants.d
    first = await tenants.publish(ACME, {"id": ID, "payload": {"n": 1}})
    assert first.status == 202, first
    assert (first.json["id"], first.json["tenant"], first.json["deliveries"]) == (ID, "acme", 1)

    # Invisible to the other tenant...
    assert (await d.get(f"/v1/events/{ID}", key=GLOBEX)).status == 404
    listed = await d.get(f"/v1/deliveries?event_id={ID}", key=GLOBEX)
    assert listed.status == 200 and listed.json["data"] == []
    # ...and no conflict with its own use of the id: a new event.
    second = await tenants.publish(GLOBEX, {"id": ID, "payload": {"n": 2}})
    assert second.status == 202, second
    assert (second.json["id"], second.json["tenant"], second.json["deliveries"]) == (
        ID,
        "globex",
        1,
    )

    # Repeats return each tenant's own original and create nothing.
    for key, original, payload in ((ACME, first, {"n": 1}), (GLOBEX, second, {"n": 2})):
        again = await tenants.publish(key, {"id": ID, "payload": payload})
        assert (again.status, again.json) == (200, original.json)
        changed = await tenants.publish(key, {"id": ID, "payload": {"n": 3}})
        assert changed.status == 409, changed

    # Each tenant sees its own event, with its own one delivery.
    for key, tenant, payload in ((ACME, "acme", {"n": 1}), (GLOBEX, "globex", {"n": 2})):
        got = await d.get(f"/v1/events/{ID}", key=key)
        assert got.status == 200, got
        assert (got.json["tenant"], got.json["payload"]) == (tenant, payload)
        [dlv] = got.json["deliveries"]
        [listed_dlv] = (await d.get(f"/v1/deliveries?event_id={ID}", key=key)).json["data"]
        assert (listed_dlv["id"], listed_dlv["tenant"], listed_dlv["event_id"]) == (
            dlv["id"],
            tenant,
            ID,
        )
        await d.wait_status(dlv["id"], "delivered", timeout=10)

    await delivered_once(tenants.acme, "acme", {"n": 1})
    await delivered_once(tenants.globex, "globex", {"n": 2})


async def test_the_idempotency_key_header_is_scoped_the_same(tenants: Tenants) -> None:
    d = tenants.d

    async def publish(key: str, n: int) -> Any:
        return await tenants.publish(key, {"payload": {"n": n}}, headers={"Idempotency-Key": ID})

    first = await publish(ACME, 1)
    assert first.status == 202 and first.json["id"] == ID, first
    assert (await d.get(f"/v1/events/{ID}", key=GLOBEX)).status == 404
    second = await publish(GLOBEX, 2)
    assert second.status == 202 and second.json["tenant"] == "globex", second
    assert (await publish(ACME, 1)).json == first.json
    assert (await publish(GLOBEX, 2)).json == second.json
    assert (await publish(ACME, 2)).status == 409
    await delivered_once(tenants.acme, "acme", {"n": 1})
    await delivered_once(tenants.globex, "globex", {"n": 2})


async def test_batches_are_scoped_the_same(tenants: Tenants) -> None:
    d = tenants.d

    def batch(*ids_and_payloads: tuple[str, int]) -> dict[str, Any]:
        return {
            "events": [
                {"type": "call.completed", "id": i, "payload": {"n": n}}
                for i, n in ids_and_payloads
            ]
        }

    first = await d.post("/v1/events/batch", batch((ID, 1), ("order-1002", 1)), key=ACME)
    assert first.status == 202, first
    second = await d.post("/v1/events/batch", batch((ID, 2)), key=GLOBEX)
    assert second.status == 202, second
    [created] = second.json["data"]
    assert (created["id"], created["tenant"], created["deliveries"]) == (ID, "globex", 1)
    again = await d.post("/v1/events/batch", batch((ID, 1), ("order-1002", 1)), key=ACME)
    assert (again.status, again.json) == (200, first.json)
    assert (await d.post("/v1/events/batch", batch((ID, 3)), key=GLOBEX)).status == 409
    await delivered_once(tenants.globex, "globex", {"n": 2})

    # One admin batch may use the same id for two tenants: two events, not a repeat.
    both = await d.post(
        "/v1/events/batch",
        {
            "events": [
                {"type": "call.completed", "id": "shared", "tenant": t, "payload": {}}
                for t in ("acme", "globex")
            ]
        },
        key=ADMIN,
    )
    assert both.status == 202, both
    assert [(r["tenant"], r["deliveries"]) for r in both.json["data"]] == [
        ("acme", 1),
        ("globex", 1),
    ]


async def test_the_admin_key_names_the_tenant_of_a_shared_id(tenants: Tenants) -> None:
    d = tenants.d
    for key, n in ((ACME, 1), (GLOBEX, 2)):
        assert (await tenants.publish(key, {"id": ID, "payload": {"n": n}})).status == 202

    ambiguous = await d.get(f"/v1/events/{ID}", key=ADMIN)
    assert ambiguous.status == 409, ambiguous
    assert ambiguous.json["error"] == "conflict"
    assert "acme, globex" in ambiguous.json["message"]
    assert "?tenant=" in ambiguous.json["message"]
    for tenant, n in (("acme", 1), ("globex", 2)):
        chosen = await d.get(f"/v1/events/{ID}?tenant={tenant}", key=ADMIN)
        assert (chosen.status, chosen.json["payload"]) == (200, {"n": n}), chosen
    # An empty tenant means the events without one: none yet, then the admin's own.
    assert (await d.get(f"/v1/events/{ID}?tenant=", key=ADMIN)).status == 404
    own = await tenants.publish(ADMIN, {"id": ID, "payload": {"n": 0}})
    assert (own.status, own.json["tenant"]) == (202, None), own
    mine = await d.get(f"/v1/events/{ID}?tenant=", key=ADMIN)
    assert (mine.status, mine.json["payload"]) == (200, {"n": 0})
    ambiguous = await d.get(f"/v1/events/{ID}", key=ADMIN)
    assert ambiguous.status == 409 and "no tenant" in ambiguous.json["message"]

    # A scoped key may name only its own tenant.
    assert (await d.get(f"/v1/events/{ID}?tenant=globex", key=ACME)).status == 403
    assert (await d.get(f"/v1/events/{ID}?tenant=acme", key=ACME)).status == 200
    # An id that only one tenant uses needs no tenant.
    assert (await tenants.publish(ACME, {"id": "acme-only", "payload": {}})).status == 202
    assert (await d.get("/v1/events/acme-only", key=ADMIN)).json["tenant"] == "acme"

    # The delivery log is a filter: every tenant's deliveries of the id, or one tenant's.
    listed = (await d.get(f"/v1/deliveries?event_id={ID}", key=ADMIN)).json["data"]
    assert sorted(x["tenant"] for x in listed) == ["acme", "globex"]
    narrowed = await d.get(f"/v1/deliveries?event_id={ID}&tenant=acme", key=ADMIN)
    assert [x["tenant"] for x in narrowed.json["data"]] == ["acme"]


# --- the upgrade of a database made by the schema before ids were scoped -----------------


def old_database(path: Path, receiver_url: str) -> None:
    """A schema version 2 database: an endpoint of tenant acme, three events with global
    ids (the newest since purged), one delivery delivered with its attempt, one pending."""
    now = int(time.time() * 1000)  # recent: within the retention period
    with sqlite3.connect(path) as conn:
        for script in MIGRATIONS[:2]:
            conn.executescript(script)
        conn.execute(
            "INSERT INTO endpoints(id, url, tenant, secret, created_at, updated_at) VALUES "
            "('ep_old', ?, 'acme', ?, 1, 1)",
            (receiver_url, "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        )
        for seq, (event_id, n) in enumerate(((ID, 1), ("order-1000", 0), ("gone", 9)), 1):
            payload = {"n": n}
            conn.execute(
                "INSERT INTO events(seq, id, type, tenant, payload, body_hash, created_at) "
                "VALUES (?, ?, 'call.completed', 'acme', ?, ?, ?)",
                (
                    seq,
                    event_id,
                    orjson.dumps(payload),
                    body_hash("call.completed", "acme", payload, None),
                    now - 1000 * (10 - seq),
                ),
            )
        conn.execute("DELETE FROM events WHERE id='gone'")
        conn.execute(
            "INSERT INTO deliveries(id, event_id, event_type, endpoint_id, tenant, status, "
            "attempt_count, next_attempt_at, created_at, updated_at) VALUES "
            "('dlv_done', 'order-1000', 'call.completed', 'ep_old', 'acme', 'delivered', 1, "
            "NULL, ?, ?), "
            "('dlv_waiting', ?, 'call.completed', 'ep_old', 'acme', 'pending', 0, 0, ?, ?)",
            (now, now, ID, now, now),
        )
        conn.execute(
            "INSERT INTO attempts(delivery_id, number, started_at, duration_ms, trigger, format, "
            "request_headers, status_code, response_headers, response_body) VALUES "
            "('dlv_done', 1, ?, 5, 'scheduled', 'json', '{}', 200, '{}', 'ok')",
            (now,),
        )
        conn.execute("PRAGMA user_version=2")


async def test_a_version_2_database_keeps_its_events_and_scopes_their_ids(
    tmp_path: Path, make_daemon: MakeDaemon, receiver: Receiver
) -> None:
    db = tmp_path / "old.db"
    old_database(db, receiver.url)
    d = await make_daemon({"api_keys": KEYS, "database": str(db)})
    d.api_key = ADMIN

    # The pending delivery of before is still claimed with its event, and delivered.
    [got] = await receiver.wait_for(1)
    assert got.headers["webhook-id"] == ID and json.loads(got.body)["data"] == {"n": 1}
    await d.wait_status("dlv_waiting", "delivered")
    done = await d.get("/v1/deliveries/dlv_done", key=ACME)
    assert (done.json["event_id"], len(done.json["attempts"])) == ("order-1000", 1)
    event = await d.get(f"/v1/events/{ID}", key=ACME)
    assert [x["id"] for x in event.json["deliveries"]] == ["dlv_waiting"]

    # Its idempotency holds for its tenant, and no longer reaches the other one.
    repeat = await d.post(
        "/v1/events", {"type": "call.completed", "id": ID, "payload": {"n": 1}}, key=ACME
    )
    assert (repeat.status, repeat.json["deliveries"]) == (200, 1), repeat
    other = await d.post(
        "/v1/events", {"type": "call.completed", "id": ID, "payload": {"n": 2}}, key=GLOBEX
    )
    assert other.status == 202, other

    def seqs() -> dict[str | None, int]:
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT tenant, seq FROM events WHERE id=?", (ID,))
            return dict(rows.fetchall())

    # Row keys go on from the highest ever used (the purged event's 3), not from the
    # highest left (2): lists stay newest first.
    assert seqs() == {"acme": 1, "globex": 4}
    newest = await d.get("/v1/events?limit=1", key=ADMIN)
    assert newest.json["data"][0]["tenant"] == "globex"
