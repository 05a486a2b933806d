"""Two real daemons on one PostgreSQL database: whichever receives a request answers the
same, and what one stores the other serves and delivers."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Daemon, Receiver, wait_until


async def test_two_daemons_share_endpoints_events_and_idempotency(
    tmp_path: Path, pg_dsn: str, receiver: Receiver
) -> None:
    daemons: list[Daemon] = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            daemons.append(await Daemon(tmp_path / name, {"database": pg_dsn}).start())
        a, b = daemons
        assert "postgresql://" in a.log_text()
        ep = await a.endpoint(receiver.url)
        # b's view follows a's change through LISTEN/NOTIFY; its API reads the database.
        assert (await b.get(f"/v1/endpoints/{ep['id']}")).status == 200

        async def b_fans_out() -> bool:
            r = await b.post("/v1/events", {"type": "call.completed", "payload": {"n": 1}})
            assert r.status == 202, r
            return bool(r.json["deliveries"] == 1)

        await wait_until(b_fans_out, 5, "b to publish to a's endpoint")
        body = {"type": "call.completed", "payload": {"k": 1}, "id": "evt_shared"}
        first = await b.post("/v1/events", body)
        assert first.status == 202, first
        again = await a.post("/v1/events", body)
        assert again.status == 200 and again.json == first.json
        other = await a.post("/v1/events", {**body, "payload": {"k": 2}})
        assert other.status == 409
        delivery_id = (await a.get("/v1/events/evt_shared")).json["deliveries"][0]["id"]
        await b.wait_status(delivery_id, "delivered")
        assert receiver.event_ids().count("evt_shared") == 1

        async def all_delivered() -> bool:
            data = (await a.get("/v1/deliveries?limit=250")).json["data"]
            return all(d["status"] == "delivered" for d in data)

        await wait_until(all_delivered, 10, "every delivery to be delivered")
        page_a = (await a.get("/v1/deliveries?limit=1")).json
        page_b = (await b.get("/v1/deliveries?limit=1")).json
        assert page_a == page_b and page_a["next_cursor"] is not None
        rest_a = (await a.get(f"/v1/deliveries?limit=5&cursor={page_a['next_cursor']}")).json
        rest_b = (await b.get(f"/v1/deliveries?limit=5&cursor={page_b['next_cursor']}")).json
        assert rest_a == rest_b
    finally:
        for d in daemons:
            await d.stop()
            await d.close()


async def test_database_env_and_no_password_in_the_log(
    tmp_path: Path, pg_dsn: str, receiver: Receiver
) -> None:
    # The test cluster trusts local connections, so the password is carried, not checked.
    dsn = pg_dsn.replace("postgresql://webhookd@", "postgresql://webhookd:pw-s3cret-9@")
    d = Daemon(tmp_path, {"database_env": "WEBHOOKD_TEST_DSN"}, env={"WEBHOOKD_TEST_DSN": dsn})
    d.config.pop("database")
    try:
        await d.start()
        ep = await d.endpoint(receiver.url)
        await d.publish()
        await receiver.wait_for(1)
        assert (await d.get(f"/v1/endpoints/{ep['id']}")).status == 200
        await d.stop()
        log = d.log_text()
        assert "postgresql://webhookd:***@" in log and "pw-s3cret-9" not in log
    finally:
        await d.close()
