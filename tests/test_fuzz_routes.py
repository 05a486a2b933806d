"""Every route of the API, fuzzed: whatever the query and the body, never a 5xx.

The routes come from the OpenAPI document the daemon serves (which a test of its own
holds equal to the router), so a new route is fuzzed without a change here. Hypothesis
builds query strings and bodies: JSON shaped after each route's request schema, with
the values that once gave 500s (lone surrogates, integers of 5,000 digits, nesting far
past the limits, `limit=²`) among ordinary and plausible ones, and bytes that are not
JSON. Every answer is below 500, and every error is in the contract's shape.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.conftest import Daemon
from webhookd.api.errors import CODES
from webhookd.api.openapi import document

KEY = "f" * 40
SCOPED_KEY = "g" * 40
DOC = document()
ROUTES = [
    (method.upper(), path)
    for path, methods in DOC["paths"].items()
    for method in methods
    if method in ("get", "post", "patch", "put", "delete")
]


@dataclass(frozen=True)
class Raw:
    """JSON text put into a generated document as it is (what json.dumps cannot write)."""

    text: str


NASTY_JSON = [
    Raw('"\\ud800"'),
    Raw('"a\\udfff"'),
    Raw('"\\ud83d\\ude00"'),  # a pair: a real character
    Raw("9" * 5000),
    Raw("-" + "9" * 4301),
    Raw("9" * 400),
    Raw("123456789012345678901234567890"),
    Raw("1e400"),
    Raw("-1E+309"),
    Raw("1.5e-400"),
    Raw('{"a":' * 200 + "1" + "}" * 200),
    Raw("[" * 1000 + "]" * 1000),
    Raw("[" * 1030 + "]" * 1030),
]
NASTY_KEYS = [Raw('"\\ud800"'), Raw('"\\u0000"'), Raw('"' + "k" * 300 + '"')]
PLAUSIBLE = [
    "call.completed",
    "webhookd.test",
    "https://example.com/hook",
    "http://127.0.0.1:9/h",
    "*",
    "call.*",
    "acme",
    "2026-01-01T00:00:00Z",
    "standard",
    "hmac-sha256",
    "json",
    "X-Extra",
    "whsec_" + "A" * 32,
    "",
]
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(PLAUSIBLE)
    | st.sampled_from(NASTY_JSON)
)
keys = st.text(max_size=12) | st.sampled_from(NASTY_KEYS)
anything = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = DOC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def shaped(schema: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values shaped after `schema` (its fields, its item types), mixed with anything."""
    schema = resolve(schema)
    if depth > 3:
        return anything
    if "properties" in schema:
        fields = {name: shaped(sub, depth + 1) for name, sub in schema["properties"].items()}
        return st.fixed_dictionaries({}, optional=fields) | anything
    if schema.get("type") == "array" and "items" in schema:
        return st.lists(shaped(schema["items"], depth + 1), max_size=3) | anything
    return anything


def to_json(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        items = (
            f"{to_json(k) if isinstance(k, Raw) else json.dumps(k)}:{to_json(v)}"
            for k, v in value.items()
        )
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    return json.dumps(value)


def body_strategy(method: str, path: str) -> st.SearchStrategy[bytes | None]:
    op = DOC["paths"][path][method.lower()]
    content = op.get("requestBody", {}).get("content", {}).get("application/json")
    json_bodies = (shaped(content["schema"]) if content else anything).map(
        lambda v: to_json(v).encode()
    )
    return st.one_of(
        st.none(),
        json_bodies,
        st.binary(max_size=200),
        st.sampled_from([b"[" * 1100, b'{"a":' * 5000, b"\xff\xfe", b"{}", b"null", b" "]),
    )


QUERY_VALUES = [
    "²",
    "9" * 5000,
    "0",
    "-1",
    "251",
    "1",
    "true",
    "2026-01-01T00:00:00Z",
    "acme",
    "delivered",
    "call.completed",
    "\x00",
    "%FF",
    "%ED%A0%80",
]
RAW_QUERY = {"%FF", "%ED%A0%80"}  # sent as they are: bytes that are not UTF-8


def query_strategy(method: str, path: str) -> st.SearchStrategy[str]:
    op = DOC["paths"][path][method.lower()]
    names = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]
    names += ["limit", "cursor", "zz"]
    value = st.sampled_from(QUERY_VALUES) | st.text(max_size=30)
    pairs = st.lists(st.tuples(st.sampled_from(names), value), max_size=4)

    def build(items: list[tuple[str, str]]) -> str:
        return "&".join(
            f"{k}={v if v in RAW_QUERY else urllib.parse.quote(v, safe='')}" for k, v in items
        )

    return pairs.map(build)


@dataclass
class Target:
    host: str
    port: int
    ids: dict[str, list[str]]
    daemon: Daemon


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    loop = asyncio.new_event_loop()
    d = Daemon(
        tmp_path_factory.mktemp("fuzz"),
        {
            "api_keys": [
                {"name": "all", "key": KEY},
                {"name": "acme", "key": SCOPED_KEY, "tenant": "acme"},
            ],
            "limits": {"max_batch_bytes": 262144},
        },
    )
    d.api_key = KEY
    try:
        loop.run_until_complete(d.start())
        served = loop.run_until_complete(d.get("/openapi.json")).json
        assert sorted(served["paths"]) == sorted(DOC["paths"])
        ep = loop.run_until_complete(d.endpoint("http://127.0.0.1:9/h"))
        ev = loop.run_until_complete(d.publish())
        dlv = loop.run_until_complete(d.get(f"/v1/deliveries?event_id={ev['id']}")).json
        fake = ["x_1", "%FF", "%ED%A0%80", "evt_" + "0" * 26, "a" * 300]
        ids = {
            "endpoint_id": [ep["id"], *fake],
            "event_id": [ev["id"], *fake],
            "delivery_id": [dlv["data"][0]["id"], *fake],
            "name": ["call.completed", "no.such", *fake],
        }
        host, port = d.base.removeprefix("http://").rsplit(":", 1)
        yield Target(host, int(port), ids, d)
    finally:
        loop.run_until_complete(d.close())
        loop.close()
    text = d.log_text()
    assert "Traceback" not in text and "internal_error" not in text, text[-3000:]


def call(
    t: Target, method: str, target: str, body: bytes | None, headers: dict[str, bytes]
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(t.host, t.port, timeout=30)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def check_answer(status: int, raw: bytes, where: str) -> None:
    assert status < 500, (where, status, raw[:500])
    if status < 400:
        return
    doc = json.loads(raw)
    assert isinstance(doc, dict) and set(doc) <= {"error", "message", "detail"}, (where, doc)
    assert doc["error"] in CODES.values(), (where, doc)
    assert isinstance(doc["message"], str) and doc["message"], (where, doc)
    assert "Traceback" not in doc["message"]
    if status == 422:
        assert doc["detail"], (where, doc)
    for item in doc.get("detail", []):
        assert set(item) == {"loc", "msg"}, (where, doc)
        assert isinstance(item["loc"], list) and isinstance(item["msg"], str), (where, doc)


SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_no_route_answers_5xx(target: Target, method: str, path: str) -> None:
    @SETTINGS
    @given(
        query=query_strategy(method, path),
        body=body_strategy(method, path),
        data=st.data(),
    )
    def fuzz(query: str, body: bytes | None, data: st.DataObject) -> None:
        def fill(m: re.Match[str]) -> str:
            choices = target.ids[m.group(1)]
            if method == "DELETE":  # keep the real objects for the other examples
                choices = choices[1:]
            return data.draw(st.sampled_from(choices))

        concrete = re.sub(r"\{([^}]+)\}", fill, path)
        url = f"{concrete}?{query}" if query else concrete
        assume(len(url) < 7000)  # aiohttp's own limit on a request line is 8,190 bytes
        key = data.draw(st.sampled_from([KEY, KEY, SCOPED_KEY]))
        headers = {"Authorization": f"Bearer {key}".encode()}
        if data.draw(st.booleans()):
            headers["Idempotency-Key"] = data.draw(
                st.sampled_from([b"k-1", b"\xff\xfe", b"x" * 300, b"a b"])
            )
        status, raw = call(target, method, url, body, headers)
        check_answer(status, raw, f"{method} {url[:200]} {(body or b'')[:200]!r}")

    fuzz()
