"""Routing by content, end to end: endpoints with a `filter` and `channels` receive exactly
the events they should, through a real daemon on both backends and real receivers on
127.0.0.1; bad filters and channels are 422s that name the place; events show their
channels; a test event ignores filters and channels; the store's fan-out on both backends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from tests.conftest import Daemon, Receiver, new_event, wait_until
from tests.pg import BACKENDS
from webhookd import signing

BOTH = pytest.mark.parametrize("backend", BACKENDS, indirect=True)
MakeDaemon = Callable[..., Awaitable[Daemon]]
MakeReceiver = Callable[..., Awaitable[Receiver]]


async def delivered_to(d: Daemon, event_id: str) -> set[str]:
    """The endpoints the event's deliveries go to (decided at publish)."""
    r = await d.get(f"/v1/events/{event_id}")
    assert r.status == 200, r
    return {x["endpoint_id"] for x in r.json["deliveries"]}


async def all_delivered(d: Daemon, event_ids: list[str]) -> bool:
    for event_id in event_ids:
        r = await d.get(f"/v1/events/{event_id}")
        if any(x["status"] != "delivered" for x in r.json["deliveries"]):
            return False
    return True


@BOTH
async def test_filters_and_channels_route_each_event_to_exactly_its_endpoints(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver, backend: str
) -> None:
    d = await make_daemon()
    rx = {name: await make_receiver() for name in ("all", "big", "eu", "us_gold", "later")}
    big_filter = {"data.amount": {"$gt": 100}}
    eps = {
        "all": await d.endpoint(rx["all"].url),
        "big": await d.endpoint(rx["big"].url, filter=big_filter),
        "eu": await d.endpoint(rx["eu"].url, channels=["eu"]),
        "us_gold": await d.endpoint(
            rx["us_gold"].url,
            channels=["us", "us.west"],
            filter={"$or": [{"data.customer.tier": "gold"}, {"data.tags": "vip"}]},
        ),
        "later": await d.endpoint(rx["later"].url, events=["invoice.paid"]),
    }
    assert eps["big"]["filter"] == big_filter and eps["big"]["channels"] is None
    assert eps["eu"]["channels"] == ["eu"] and eps["eu"]["filter"] is None
    ep_id = {name: ep["id"] for name, ep in eps.items()}

    small = await d.publish(payload={"amount": 5})
    large = await d.publish(payload={"amount": 500})
    large_eu = await d.publish(payload={"amount": 500}, channels=["eu", "other"])
    gold_us = await d.publish(payload={"amount": 1, "customer": {"tier": "gold"}}, channels=["us"])
    r = await d.post(
        "/v1/events/batch",
        {
            "events": [
                {"type": "call.completed", "payload": {"tags": ["vip"]}, "channels": ["us.west"]},
                {"type": "call.completed", "payload": {"tags": ["x"]}, "channels": ["us"]},
            ]
        },
    )
    assert r.status == 202, r
    vip_west, plain_us = r.json["data"]
    # Now the filter of "later" changes; events published afterwards follow the new one.
    r = await d.patch(
        f"/v1/endpoints/{ep_id['later']}",
        {"events": ["*"], "filter": {"data.amount": {"$in": [7, 8]}}, "channels": None},
    )
    assert r.status == 200 and r.json["filter"] == {"data.amount": {"$in": [7, 8]}}, r
    seven = await d.publish(payload={"amount": 7}, channels=["eu"])

    expected = {
        small["id"]: {"all"},
        large["id"]: {"all", "big"},
        large_eu["id"]: {"all", "big", "eu"},
        gold_us["id"]: {"all", "us_gold"},
        vip_west["id"]: {"all", "us_gold"},
        plain_us["id"]: {"all"},
        seven["id"]: {"all", "eu", "later"},
    }
    for event_id, names in expected.items():
        assert await delivered_to(d, event_id) == {ep_id[n] for n in names}, event_id
    assert [large_eu["deliveries"], small["deliveries"]] == [3, 1]

    await wait_until(lambda: all_delivered(d, list(expected)), 20, "every delivery")
    for name, receiver in rx.items():
        got = sorted(receiver.event_ids())
        assert got == sorted(e for e, names in expected.items() if name in names), name
    # The body a receiver gets is unchanged by channels.
    body = orjson.loads(next(x.body for x in rx["eu"].received if b'"amount":7' in x.body))
    assert set(body) == {"id", "type", "timestamp", "data"}


@BOTH
async def test_events_show_their_channels_and_idempotency_counts_them(
    make_daemon: MakeDaemon, backend: str
) -> None:
    d = await make_daemon()
    tagged = await d.publish(payload={}, channels=["eu", "us", "eu"], id="order-1")
    plain = await d.publish(payload={}, channels=[])
    got = (await d.get(f"/v1/events/{tagged['id']}")).json
    assert got["channels"] == ["eu", "us"]  # repeats dropped, order kept
    assert "channels" not in (await d.get(f"/v1/events/{plain['id']}")).json
    listed = {e["id"]: e for e in (await d.get("/v1/events")).json["data"]}
    assert listed[tagged["id"]]["channels"] == ["eu", "us"]
    assert "channels" not in listed[plain["id"]]
    # The same id with the same channels (in any order) is the same event; others conflict.
    same = await d.post(
        "/v1/events",
        {"type": "call.completed", "payload": {}, "channels": ["us", "eu"], "id": "order-1"},
    )
    assert same.status == 200 and same.json["id"] == "order-1", same
    other = await d.post(
        "/v1/events", {"type": "call.completed", "payload": {}, "channels": ["eu"], "id": "order-1"}
    )
    assert other.status == 409, other
    none = await d.post("/v1/events", {"type": "call.completed", "payload": {}, "id": "order-1"})
    assert none.status == 409, none


async def test_a_test_event_ignores_filter_and_channels(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver
) -> None:
    d = await make_daemon()
    rx = await make_receiver()
    ep = await d.endpoint(rx.url, channels=["nowhere"], filter={"data.never": True})
    assert (await d.publish(payload={"never": False}))["deliveries"] == 0
    r = await d.post(f"/v1/endpoints/{ep['id']}/test", {})
    assert r.status == 202, r
    await rx.wait_for(1)
    assert rx.event_ids() == [r.json["event_id"]]


async def test_filters_survive_a_restart(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver
) -> None:
    d = await make_daemon()
    ep = await d.endpoint("https://example.com/h", filter={"data.n": {"$gte": 10}}, channels=["a"])
    await d.stop()
    await d.start()
    assert (await d.get(f"/v1/endpoints/{ep['id']}")).json["filter"] == {"data.n": {"$gte": 10}}
    assert (await d.publish(payload={"n": 10}, channels=["a"]))["deliveries"] == 1
    assert (await d.publish(payload={"n": 9}, channels=["a"]))["deliveries"] == 0
    assert (await d.publish(payload={"n": 10}))["deliveries"] == 0


# --- 422s ---------------------------------------------------------------------------------

BAD_ENDPOINT_FIELDS: list[tuple[dict[str, Any], list[Any], str]] = [
    ({"filter": []}, ["body", "filter"], "expected null or an object"),
    ({"filter": {"data.amount": {"$gt": [1]}}}, ["body", "filter", "data.amount", "$gt"], "number"),
    ({"filter": {"data.a": {"$in": "x"}}}, ["body", "filter", "data.a", "$in"], "needs a list"),
    ({"filter": {"data.a": {"$near": 1}}}, ["body", "filter", "data.a", "$near"], "unknown"),
    ({"filter": {"amount": 1}}, ["body", "filter", "amount"], "a path starts with"),
    ({"filter": {"$or": [{"type": "a"}, {"x": 1}]}}, ["body", "filter", "$or", 1, "x"], "path"),
    (
        {"filter": {f"data.f{i}": i for i in range(51)}},
        ["body", "filter"],
        "at most 50 are allowed",
    ),
    ({"filter": {"data.s": "x" * 20000}}, ["body", "filter"], "bytes of JSON"),
    ({"channels": "eu"}, ["body", "channels"], "list of channel names"),
    ({"channels": []}, ["body", "channels"], "null receives every event"),
    ({"channels": ["eu", "not ok"]}, ["body", "channels", 1], "channel name"),
    ({"channels": [f"c{i}" for i in range(51)]}, ["body", "channels"], "at most 50"),
]


@pytest.mark.parametrize(("fields", "loc", "words"), BAD_ENDPOINT_FIELDS)
async def test_bad_filters_and_channels_are_422_naming_the_place(
    daemon: Daemon, fields: dict[str, Any], loc: list[Any], words: str
) -> None:
    r = await daemon.post("/v1/endpoints", {"url": "https://example.com/h", **fields})
    assert r.status == 422, r
    assert any(x["loc"] == loc and words in x["msg"] for x in r.json["detail"]), r.json
    ep = await daemon.endpoint("https://example.com/h", filter={"type": "call.completed"})
    r = await daemon.patch(f"/v1/endpoints/{ep['id']}", fields)
    assert r.status == 422, r
    assert any(x["loc"] == loc and words in x["msg"] for x in r.json["detail"]), r.json
    # Nothing changed.
    assert (await daemon.get(f"/v1/endpoints/{ep['id']}")).json["filter"] == {
        "type": "call.completed"
    }


async def test_bad_event_channels_are_422_with_the_event_index(daemon: Daemon) -> None:
    r = await daemon.post(
        "/v1/events", {"type": "call.completed", "payload": {}, "channels": ["a b"]}
    )
    assert r.status == 422 and r.json["detail"][0]["loc"] == ["body", "channels", 0], r
    r = await daemon.post(
        "/v1/events",
        {"type": "call.completed", "payload": {}, "channels": [f"c{i}" for i in range(11)]},
    )
    assert r.status == 422 and "at most 10" in r.json["detail"][0]["msg"], r
    good = {"type": "call.completed", "payload": {}, "channels": ["eu"]}
    r = await daemon.post(
        "/v1/events/batch", {"events": [good, {**good, "channels": {"eu": 1}}, good]}
    )
    assert r.status == 422, r
    assert [x["loc"] for x in r.json["detail"]] == [["body", "events", 1, "channels"]]
    assert (await daemon.get("/v1/events")).json["data"] == []  # the batch is refused whole


# --- the store: fan-out with filters and channels on both backends -----------------------


@BOTH
async def test_the_store_fans_out_by_filter_and_channels(store: Any, backend: str) -> None:
    def fields(**kw: Any) -> dict[str, Any]:
        return {"url": "https://example.com/h", "secret": signing.generate_secret(), **kw}

    plain = await store.create_endpoint(fields())
    filtered = await store.create_endpoint(fields(filter={"data.n": {"$gt": 1}}))
    channeled = await store.create_endpoint(fields(channels=["eu"]))
    both = await store.create_endpoint(fields(channels=["eu"], filter={"data.n": {"$lt": 5}}))

    def ev(n: int, channels: tuple[str, ...] | None = None) -> Any:
        e = new_event(n)
        e.channels = channels
        return e

    results = await store.publish([ev(0), ev(3), ev(3, ("eu",)), ev(9, ("eu", "us"))])
    got = [{d.endpoint_id for d in (await store.get_event(r.event.id))[1]} for r in results]
    assert got == [
        {plain.id},
        {plain.id, filtered.id},
        {plain.id, filtered.id, channeled.id, both.id},
        {plain.id, filtered.id, channeled.id},
    ]
    stored, _ = await store.get_event(results[3].event.id)
    assert stored.channels == ("eu", "us")
    # A change of the filter applies to the next publish.
    await store.update_endpoint(both.id, {"filter": None, "channels": None})
    [again] = await store.publish([ev(9)])
    assert {d.endpoint_id for d in (await store.get_event(again.event.id))[1]} == {
        plain.id,
        filtered.id,
        both.id,
    }


# --- the command line ----------------------------------------------------------------------


async def test_cli_sets_filters_and_channels_and_publishes_with_channels(
    daemon: Daemon, receiver: Receiver
) -> None:
    from tests.test_cli_client import fails, ok, ok_json

    big = '{"data.amount": {"$gt": 100}}'
    ep = await ok_json(
        daemon, "endpoints", "create", receiver.url, "--filter", big, "--channel", "eu",
        "--channel", "us",
    )  # fmt: skip
    assert ep["filter"] == {"data.amount": {"$gt": 100}} and ep["channels"] == ["eu", "us"]
    shown = await ok(daemon, "endpoints", "show", ep["id"])
    assert "data.amount" in shown and "eu" in shown

    published = await ok_json(
        daemon, "events", "publish", "call.completed", "--payload", '{"amount": 500}',
        "--channel", "us",
    )  # fmt: skip
    assert published["deliveries"] == 1
    assert (await daemon.get(f"/v1/events/{published['id']}")).json["channels"] == ["us"]
    out = await ok(
        daemon, "trigger", "call.completed", "--payload", '{"amount": 5}', "--channel", "eu"
    )
    assert "to 0 endpoints" in out  # the filter holds it back
    out = await ok(daemon, "trigger", "call.completed", "--payload", '{"amount": 500}')
    assert "to 0 endpoints" in out  # no channel: the endpoint's channels hold it back

    changed = await ok_json(
        daemon, "endpoints", "update", ep["id"], "--filter", "none", "--no-channels"
    )
    assert changed["filter"] is None and changed["channels"] is None
    out = await ok(daemon, "trigger", "call.completed", "--payload", '{"amount": 5}')
    assert "to 1 endpoint" in out
    changed = await ok_json(daemon, "endpoints", "update", ep["id"], "--channel", "x")
    assert changed["channels"] == ["x"]

    err = await fails(
        daemon, "endpoints", "update", ep["id"], "--filter", '{"data.amount": {"$gt": [1]}}'
    )
    assert "filter.data.amount.$gt" in err and "number or a string" in err, err
    err = await fails(daemon, "endpoints", "update", ep["id"], "--filter", "[1]", code=2)
    assert "expected a JSON object" in err


# --- the console: the form's fields and the routing preview ------------------------------


async def test_console_form_edits_filter_and_channels_and_previews_them(daemon: Daemon) -> None:
    import html

    from tests.console_client import ConsoleClient

    small = await daemon.publish(payload={"amount": 5})
    large_eu = await daemon.publish(payload={"amount": 500}, channels=["eu"])
    invoice = await daemon.publish("invoice.paid", payload={"amount": 900})
    c = ConsoleClient(daemon.base)
    try:
        csrf = (await c.get("/console/endpoints/new")).csrf()
        form = {
            "url": "https://example.com/h",
            "events": "call.completed",
            "format": "json",
            "delay_s": "0",
            "filter": '{"data.amount": {"$gt": 100}}',
            "channels": "",
        }
        # Without JavaScript: the whole form comes back as filled in, with the preview.
        page = await c.post("/console/filter-preview", form, csrf=csrf)
        assert page.status == 200 and 'data-test="endpoint-form"' in page.text, page.text[:500]
        assert '{"data.amount": {"$gt": 100}}</textarea>' in html.unescape(page.text)
        assert verdicts(page.text) == {large_eu["id"]: "yes", small["id"]: "no: filter"}
        assert invoice["id"] not in page.text  # not one of the endpoint's types
        assert (await daemon.get("/v1/endpoints")).json["data"] == []  # nothing saved

        # Live (htmx): the preview alone.
        live = await htmx_preview(c, daemon, csrf, {**form, "channels": "us, ap"})
        assert "<html" not in live and 'id="filter-preview"' in live
        assert verdicts(live) == {large_eu["id"]: "no: channels", small["id"]: "no: channels"}
        live = await htmx_preview(c, daemon, csrf, {**form, "filter": "", "events": "*"})
        assert set(verdicts(live).values()) == {"yes"} and invoice["id"] in live
        live = await htmx_preview(
            c, daemon, csrf, {**form, "filter": '{"data.amount": {"$gt": []}}'}
        )
        assert "filter.data.amount.$gt: $gt compares with a number or a string" in html.unescape(
            live
        )
        live = await htmx_preview(c, daemon, csrf, {**form, "filter": '{"data.amount": '})
        assert "filter: not valid JSON" in live

        # Saving: a bad filter is shown at its field, with the place inside it.
        bad = await c.post(
            "/console/endpoints", {**form, "filter": '{"data.x": {"$in": 1}}'}, csrf=csrf
        )
        assert bad.status == 422 and 'data-test="problem-filter"' in bad.text
        assert "data.x.$in: $in needs a list of values" in html.unescape(bad.text)
        created = await c.post("/console/endpoints", {**form, "channels": "eu\nus"}, csrf=csrf)
        assert created.status == 303, created.text[:500]
        [ep] = (await daemon.get("/v1/endpoints")).json["data"]
        assert ep["filter"] == {"data.amount": {"$gt": 100}} and ep["channels"] == ["eu", "us"]
        shown = html.unescape((await c.get(f"/console/endpoints/{ep['id']}")).text)
        assert '<code>{"data.amount": {"$gt": 100}}</code>' in shown and "eu, us</dd>" in shown
        event_page = (await c.get(f"/console/events/{large_eu['id']}")).text
        assert 'data-test="event-channels">channels eu</span>' in event_page
        edit = await c.get(f"/console/endpoints/{ep['id']}/edit")
        assert '"$gt": 100' in html.unescape(edit.text) and "eu\nus</textarea>" in edit.text
        # The edit form's preview knows the endpoint (its tenant); emptied fields remove both.
        page = await c.post(
            "/console/filter-preview",
            {**form, "endpoint_id": ep["id"], "channels": "eu"},
            csrf=csrf,
        )
        assert verdicts(page.text) == {large_eu["id"]: "yes", small["id"]: "no: channels"}
        saved = await c.post(
            f"/console/endpoints/{ep['id']}/edit", {**form, "filter": "", "channels": ""}, csrf=csrf
        )
        assert saved.status == 303, saved.text[:500]
        got = (await daemon.get(f"/v1/endpoints/{ep['id']}")).json
        assert got["filter"] is None and got["channels"] is None
    finally:
        await c.close()


def verdicts(text: str) -> dict[str, str]:
    import re

    return dict(
        re.findall(r'data-test="preview-row" data-id="([^"]+)" data-verdict="([^"]+)"', text)
    )


async def htmx_preview(c: Any, daemon: Daemon, csrf: str, form: dict[str, str]) -> str:
    headers = {
        "HX-Request": "true",
        "HX-Target": "filter-preview",
        "X-CSRF-Token": csrf,
        "Origin": daemon.base,
    }
    async with c.session.post(
        daemon.base + "/console/filter-preview", data=form, headers=headers
    ) as r:
        assert r.status == 200, await r.text()
        text: str = await r.text()
        return text
