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
