"""Attacks from the API side: hostile bodies, queries and IDs against a running daemon.

Property-based: hypothesis generates the input; whatever it is, the answer is a 4xx in
the error format (or a success), never a 500, and the daemon stays up.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

KEY = "h" * 40


class Api:
    def __init__(self, base: str) -> None:
        self.base = base

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.base + path, data=body, method=method)  # noqa: S310
        req.add_header("Authorization", f"Bearer {KEY}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback only
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp: Path = tmp_path_factory.mktemp("hostile")
    cfg = {
        "listen": "127.0.0.1:0",
        "database": str(tmp / "h.db"),
        "api_keys": [{"name": "t", "key": KEY}],
        "event_types": [{"name": "call.completed"}],
        "limits": {"max_payload_bytes": 4096, "max_batch_bytes": 65536},
    }
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
    log = tmp / "log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "webhookd", "serve", "-c", str(tmp / "c.yaml")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 20
    m = None
    while m is None and time.monotonic() < deadline:
        m = re.search(r"listen=(\S+)", log.read_text())
        if m is None:
            time.sleep(0.05)
    assert m, log.read_text()
    a = Api(f"http://{m.group(1)}")
    yield a
    proc.terminate()
    proc.wait(timeout=20)
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert "internal_error" not in text


def check(status: int, body: bytes) -> None:
    assert status < 500, (status, body[:500])
    if status >= 400:
        doc = json.loads(body)
        assert set(doc) <= {"error", "message", "detail"}
        assert isinstance(doc["error"], str) and isinstance(doc["message"], str)
        assert "Traceback" not in doc["message"]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "url",
        "events",
        "tenant",
        "description",
        "metadata",
        "active",
        "secret",
        "signature",
        "format",
        "headers",
        "delay_s",
        "rate_limit_per_s",
        "max_in_flight",
        "ordered",
        "type",
        "payload",
        "id",
        "deliver_at",
        "name",
        "grace_s",
        "since",
        "until",
        "event_type",
    ]
)
bodies = st.dictionaries(field_names | st.text(max_size=10), json_values, max_size=8)
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(body=bodies | json_values)
def test_endpoint_bodies(api: Api, body: Any) -> None:
    status, _, raw = api.call("POST", "/v1/endpoints", json.dumps(body).encode())
    check(status, raw)


@SETTINGS
@given(body=bodies | json_values)
def test_publish_bodies(api: Api, body: Any) -> None:
    status, _, raw = api.call("POST", "/v1/events", json.dumps(body).encode())
    check(status, raw)


@SETTINGS
@given(events=st.lists(bodies, max_size=5) | json_values)
def test_batch_bodies(api: Api, events: Any) -> None:
    status, _, raw = api.call("POST", "/v1/events/batch", json.dumps({"events": events}).encode())
    check(status, raw)


@SETTINGS
@given(raw=st.binary(max_size=300))
def test_raw_bytes_bodies(api: Api, raw: bytes) -> None:
    for path in ("/v1/endpoints", "/v1/events", "/v1/events/batch", "/v1/event-types"):
        status, _, out = api.call("POST", path, raw)
        check(status, out)


@SETTINGS
@given(
    params=st.dictionaries(
        st.sampled_from(
            ["limit", "cursor", "since", "until", "type", "status", "active", "tenant", "x"]
        ),
        st.text(max_size=30),
        max_size=4,
    ),
    path=st.sampled_from(["/v1/endpoints", "/v1/events", "/v1/deliveries", "/v1/event-types"]),
)
def test_list_queries(api: Api, params: dict[str, str], path: str) -> None:
    query = urllib.parse.urlencode(params)
    status, _, raw = api.call("GET", f"{path}?{query}")
    check(status, raw)


@SETTINGS
@given(ident=st.text(min_size=1, max_size=200))
def test_odd_ids(api: Api, ident: str) -> None:
    quoted = urllib.parse.quote(ident, safe="")
    for method, path in (
        ("GET", f"/v1/endpoints/{quoted}"),
        ("PATCH", f"/v1/endpoints/{quoted}"),
        ("DELETE", f"/v1/endpoints/{quoted}"),
        ("GET", f"/v1/events/{quoted}"),
        ("GET", f"/v1/deliveries/{quoted}"),
        ("POST", f"/v1/deliveries/{quoted}/retry"),
        ("DELETE", f"/v1/event-types/{quoted}"),
    ):
        body = b"{}" if method in ("PATCH", "POST") else None
        status, _, raw = api.call(method, path, body)
        check(status, raw)
        assert status in (400, 404, 405, 409, 422), (method, path, status)


def test_body_over_the_limit_is_refused_before_it_is_read(api: Api) -> None:
    import socket

    host, port = api.base.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /v1/events/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {KEY}\r\n".encode()
            + b"Content-Length: 1000000000\r\n\r\n{"
        )
        # The answer comes without the gigabyte being sent.
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"payload_too_large" in answer


def test_huge_lists_are_refused(api: Api) -> None:
    events = [{"type": "call.completed", "payload": {}}] * 1001
    status, _, raw = api.call("POST", "/v1/events/batch", json.dumps({"events": events}).encode())
    assert status in (413, 422)
    check(status, raw)
    body = {"url": "https://example.com", "events": ["*"] * 5000}
    status, _, raw = api.call("POST", "/v1/endpoints", json.dumps(body).encode())
    assert status == 422
    check(status, raw)


def test_deeply_nested_json(api: Api) -> None:
    deep = b"[" * 100000 + b"]" * 100000
    status, _, raw = api.call("POST", "/v1/events", deep)
    assert status in (400, 413)
    check(status, raw)


# --- the nasty values of "never a 500", one by one, against a daemon of tests.conftest ----

SCOPED_KEY = "s" * 40
HUGE = "9" * 5000  # past Python's int() limit of 4,300 digits


async def _hostile_daemon(make_daemon: Any) -> Any:
    d = await make_daemon(
        {
            "api_keys": [
                {"name": "all", "key": KEY},
                {"name": "acme", "key": SCOPED_KEY, "tenant": "acme"},
            ]
        }
    )
    d.api_key = KEY
    return d


def _problem(r: Any, status: int = 422) -> list[Any]:
    """The `detail` locs of an error answer in the contract's shape."""
    assert r.status == status, r
    check(r.status, r.body)
    return [item["loc"] for item in r.json.get("detail", [])]


def _no_traceback(d: Any) -> None:
    text = d.log_text()
    assert "Traceback" not in text and "internal_error" not in text, text[-3000:]


async def test_a_lone_surrogate_is_a_422_naming_where_it_is(make_daemon: Any) -> None:
    d = await _hostile_daemon(make_daemon)
    ev = b'{"type": "call.completed", "payload": {"a": ["x", "\\ud800"]}}'
    assert _problem(await d.post("/v1/events", data=ev)) == [["body", "payload", "a", 1]]
    batch = b'{"events": [{"type": "call.completed", "payload": {}}, ' + ev + b"]}"
    locs = _problem(await d.post("/v1/events/batch", data=batch))
    assert locs == [["body", "events", 1, "payload", "a", 1]]
    key = b'{"type": "call.completed", "payload": {"\\udfff": 1}}'
    assert _problem(await d.post("/v1/events", data=key)) == [["body", "payload"]]
    url = '"url": "https://example.com/h"'
    for field, loc in (
        ('"description": "\\ud800"', ["body", "description"]),
        ('"metadata": {"k": "a\\ud800"}', ["body", "metadata", "k"]),
        ('"headers": {"X-Extra": "\\udbff"}', ["body", "headers", "X-Extra"]),
    ):
        r = await d.post("/v1/endpoints", data=f"{{{url}, {field}}}".encode())
        assert _problem(r) == [loc], field
    # A key of metadata: named as well as the answer can (escaped), and no 500.
    r = await d.post("/v1/endpoints", data=f'{{{url}, "metadata": {{"\\ud800": "v"}}}}'.encode())
    assert _problem(r) == [["body", "metadata", "\\ud800"]]
    # A surrogate pair is a character: accepted and kept.
    ok = await d.post(
        "/v1/events", data=b'{"type":"call.completed","payload":{"e":"\\ud83d\\ude00"}}'
    )
    assert ok.status == 202, ok
    got = await d.get(f"/v1/events/{ok.json['id']}")
    assert got.json["payload"] == {"e": "\U0001f600"}
    _no_traceback(d)


async def test_integers_of_any_length_pass_through_exactly(make_daemon: Any, receiver: Any) -> None:
    d = await _hostile_daemon(make_daemon)
    await d.endpoint(receiver.url)
    payload = f'{{"n": {HUGE}, "m": -{HUGE}1, "k": 12345678901234567890123, "x": [1, {HUGE}]}}'
    body = f'{{"type": "call.completed", "id": "big-1", "payload": {payload}}}'.encode()
    r = await d.post("/v1/events", data=body)
    assert r.status == 202, r
    again = await d.post("/v1/events", data=body)  # the idempotency hash copes too
    assert again.status == 200, again
    got = await d.get(f"/v1/events/{r.json['id']}")
    assert f'"n":{HUGE},"m":-{HUGE}1,' in got.body.decode()
    sent = (await receiver.wait_for(1))[0]
    assert f'"data":{payload.replace(" ", "")}' in sent.body.decode()
    batch = f'{{"events": [{{"type": "call.completed", "payload": {payload}}}]}}'.encode()
    assert (await d.post("/v1/events/batch", data=batch)).status == 202
    # Where a bounded number is wanted, any length out of bounds is a 422 naming it.
    for field in ("delay_s", "max_in_flight", "rate_limit_per_s"):
        for digits in (HUGE, "9" * 400):  # 400 digits: an int, but beyond any float
            ep = f'{{"url": "https://example.com/h", "{field}": {digits}}}'.encode()
            locs = _problem(await d.post("/v1/endpoints", data=ep))
            assert locs == [["body", field]], (field, len(digits))
    _no_traceback(d)


def _nested(depth: int) -> str:
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)


async def test_nesting_is_limited_to_128_levels(make_daemon: Any) -> None:
    d = await _hostile_daemon(make_daemon)
    ok = await d.post(
        "/v1/events", data=f'{{"type":"call.completed","payload":{_nested(128)}}}'.encode()
    )
    assert ok.status == 202, ok
    for depth in (129, 300, 1000, 1021):
        body = f'{{"type":"call.completed","payload":{_nested(depth)}}}'.encode()
        locs = _problem(await d.post("/v1/events", data=body))
        assert locs and locs[0][:2] == ["body", "payload"], (depth, locs)
        batch = b'{"events":[' + body + b"]}"  # 3 levels more: orjson parses 1,024
        locs = _problem(await d.post("/v1/events/batch", data=batch))
        assert locs and locs[0][:4] == ["body", "events", 0, "payload"], (depth, locs)
    deep_list = b'{"type":"call.completed","payload":{"a":' + b"[" * 1000 + b"]" * 1000 + b"}}"
    assert _problem(await d.post("/v1/events", data=deep_list))
    meta = f'{{"url": "https://example.com/h", "metadata": {_nested(1000)}}}'.encode()
    assert _problem(await d.post("/v1/endpoints", data=meta))
    beyond = b'{"type":"call.completed","payload":' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert _problem(await d.post("/v1/events", data=beyond), 400) == []
    _no_traceback(d)


async def test_an_authorization_header_that_is_not_utf8_is_a_401(make_daemon: Any) -> None:
    import http.client

    d = await _hostile_daemon(make_daemon)
    host, port = d.base.removeprefix("http://").rsplit(":", 1)
    for value in (
        b"Bearer \xff\xfe\xfa",
        b"Bearer " + KEY.encode()[:-2] + b"\xed\xa0\x80",
        b"\xff",
    ):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.putrequest("GET", "/v1/endpoints")
            conn.putheader("Authorization", value)
            conn.endheaders()
            resp = conn.getresponse()
            status, raw = resp.status, resp.read()
        finally:
            conn.close()
        assert status == 401, (value, status, raw)
        check(status, raw)
    _no_traceback(d)


async def test_limit_must_be_ascii_digits_from_1_to_250(make_daemon: Any) -> None:
    d = await _hostile_daemon(make_daemon)
    for path in ("/v1/events", "/v1/endpoints", "/v1/deliveries", "/v1/event-types"):
        for bad in ("²", "١٢", "9" * 5000, "0", "251", "-1", "+5", " 5"):
            r = await d.get(f"{path}?limit={urllib.parse.quote(bad)}")
            assert _problem(r) == [["query", "limit"]], (path, bad)
        assert (await d.get(f"{path}?limit=250")).status == 200
    _no_traceback(d)


async def test_a_tenant_scoped_key_cannot_change_the_shared_catalog(make_daemon: Any) -> None:
    d = await _hostile_daemon(make_daemon)
    listed = await d.get("/v1/event-types", key=SCOPED_KEY)
    assert listed.status == 200
    assert "call.completed" in [t["name"] for t in listed.json["data"]]
    r = await d.post("/v1/event-types", {"name": "acme.only"}, key=SCOPED_KEY)
    assert _problem(r, 403) == [] and r.json["error"] == "forbidden"
    created = await d.post("/v1/event-types", {"name": "shared.kind"})
    assert created.status == 201, created
    gone = await d.delete("/v1/event-types/shared.kind", key=SCOPED_KEY)
    assert _problem(gone, 403) == []
    again = await d.post("/v1/event-types", {"name": "shared.kind"}, key=SCOPED_KEY)
    assert again.status == 403, again
    # Still there for every tenant to publish.
    names = [t["name"] for t in (await d.get("/v1/event-types")).json["data"]]
    assert "shared.kind" in names and "acme.only" not in names
    assert (await d.delete("/v1/event-types/shared.kind")).status == 204
    _no_traceback(d)
