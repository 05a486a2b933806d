"""Request bodies: the json envelope, form and multipart encodings, read back with
standard parsers the way a receiver would."""

from __future__ import annotations

import email.parser
import email.policy
import json
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qs, parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webhookd.formats import FORMATS, field_text, form_body, json_body, multipart_body, render

EVENT = {
    "event_id": "evt_01J0000000000000000000000",
    "event_type": "call.completed",
    "timestamp": "2024-05-01T12:00:00.123Z",
}

PAYLOAD: dict[str, Any] = {
    "text": "hello world & more=yes?",
    "unicode": "caf\u00e9 \u2713 \U0001f600",
    "empty": "",
    "int": 42,
    "negative": -7,
    "float": 1.5,
    "big": 12345678901234567,
    "yes": True,
    "no": False,
    "nothing": None,
    "object": {"a": 1, "b": [True, None], "c": "\u00e9"},
    "array": [1, "two", {"three": 3}],
    "empty_object": {},
    "empty_array": [],
}

EXPECTED_TEXT = {
    "text": "hello world & more=yes?",
    "unicode": "caf\u00e9 \u2713 \U0001f600",
    "empty": "",
    "int": "42",
    "negative": "-7",
    "float": "1.5",
    "big": "12345678901234567",
    "yes": "true",
    "no": "false",
    "nothing": "",
}
JSON_TEXT_KEYS = ("object", "array", "empty_object", "empty_array")


def check_field_texts(fields: dict[str, str]) -> None:
    assert list(fields) == list(PAYLOAD)
    for key, text in EXPECTED_TEXT.items():
        assert fields[key] == text, key
    for key in JSON_TEXT_KEYS:
        assert json.loads(fields[key]) == PAYLOAD[key], key


def parse_multipart(body: bytes, content_type: str) -> list[tuple[str, str]]:
    raw = f"Content-Type: {content_type}\r\n\r\n".encode() + body
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    assert msg.is_multipart()
    assert not msg.defects
    out = []
    for part in msg.iter_parts():
        assert part.get_content_disposition() == "form-data"
        name = part.get_param("name", header="content-disposition")
        assert isinstance(name, str)
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        out.append((name, payload.decode("utf-8")))
    return out


# --- json ------------------------------------------------------------------------------


def test_json_envelope_without_tenant() -> None:
    payload = b'{"n":1}'
    body = json_body(**EVENT, tenant=None, payload_json=payload)
    doc = json.loads(body)
    assert set(doc) == {"id", "type", "timestamp", "data"}
    assert doc == {
        "id": EVENT["event_id"],
        "type": EVENT["event_type"],
        "timestamp": EVENT["timestamp"],
        "data": {"n": 1},
    }


@pytest.mark.parametrize("tenant", ["acme", "", 't\u00e9nant "quoted"'])
def test_json_envelope_with_tenant(tenant: str) -> None:
    body = json_body(**EVENT, tenant=tenant, payload_json=b"{}")
    doc = json.loads(body)
    assert set(doc) == {"id", "type", "timestamp", "tenant", "data"}
    assert doc["tenant"] == tenant
    assert doc["data"] == {}


@pytest.mark.parametrize(
    "payload",
    [
        b'{ "z": 1,  "a": [1.50, "\\u00e9", null],\n "nested": {"k": true} }',
        '{"caf\u00e9": "\u2713", "n": 1e3}'.encode(),
        b"{}",
        b"[1,2,3]",
        b'"just a string"',
        b"null",
    ],
)
def test_json_envelope_splices_the_payload_bytes_unchanged(payload: bytes) -> None:
    body = json_body(**EVENT, tenant="acme", payload_json=payload)
    assert payload in body
    assert body.endswith(b'"data":' + payload + b"}")
    assert json.loads(body)["data"] == json.loads(payload)


def test_json_envelope_escapes_the_header_fields() -> None:
    body = json_body("evt_1", 'odd "type"\n', "2024-01-01T00:00:00Z", "a\\b", b"{}")
    doc = json.loads(body)
    assert doc["type"] == 'odd "type"\n'
    assert doc["tenant"] == "a\\b"


@given(
    payload=st.dictionaries(
        st.text(max_size=10),
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
            max_leaves=10,
        ),
        max_size=5,
    ),
    tenant=st.none() | st.text(max_size=10),
)
def test_json_envelope_round_trips(payload: dict[str, Any], tenant: str | None) -> None:
    raw = json.dumps(payload).encode()
    doc = json.loads(json_body(**EVENT, tenant=tenant, payload_json=raw))
    expected_keys = {"id", "type", "timestamp", "data"} | (
        {"tenant"} if tenant is not None else set()
    )
    assert set(doc) == expected_keys
    assert doc["data"] == payload
    if tenant is not None:
        assert doc["tenant"] == tenant


# --- field text ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("x y", "x y"),
        ("", ""),
        (0, "0"),
        (42, "42"),
        (-1, "-1"),
        (2.5, "2.5"),
        (True, "true"),
        (False, "false"),
        (None, ""),
        ({"a": [1, None]}, '{"a":[1,null]}'),
        ([], "[]"),
    ],
)
def test_field_text(value: Any, text: str) -> None:
    assert field_text(value) == text


# --- form ------------------------------------------------------------------------------


def test_form_encoding_follows_the_contract() -> None:
    body = form_body(PAYLOAD)
    body.decode("ascii")
    parsed = parse_qs(body.decode(), keep_blank_values=True, strict_parsing=True)
    assert all(len(values) == 1 for values in parsed.values())
    check_field_texts({k: v[0] for k, v in parsed.items()})


def test_form_fields_keep_payload_order() -> None:
    pairs = parse_qsl(form_body(PAYLOAD).decode(), keep_blank_values=True)
    assert [k for k, _ in pairs] == list(PAYLOAD)


def test_form_keys_with_reserved_characters() -> None:
    payload = {"a&b=c": "1", "caf\u00e9": "\u00e9", "sp ace+plus": "x+y z", "%41": "%"}
    pairs = parse_qsl(form_body(payload).decode(), keep_blank_values=True, strict_parsing=True)
    assert pairs == [(k, str(v)) for k, v in payload.items()]


def test_form_of_an_empty_payload_is_empty() -> None:
    assert form_body({}) == b""


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=10),
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20),
        max_size=8,
    )
)
def test_form_round_trips_any_scalars(payload: dict[str, Any]) -> None:
    pairs = parse_qsl(form_body(payload).decode(), keep_blank_values=True)
    assert pairs == [(k, field_text(v)) for k, v in payload.items()]


# --- multipart -------------------------------------------------------------------------


def test_multipart_encoding_follows_the_contract() -> None:
    body, ctype = multipart_body(PAYLOAD)
    parts = parse_multipart(body, ctype)
    assert [name for name, _ in parts] == list(PAYLOAD)
    check_field_texts(dict(parts))


def test_multipart_names_with_quotes_and_non_ascii() -> None:
    payload = {
        'say "hi"': "quoted",
        "caf\u00e9 \u2713": "non-ASCII name",
        "back\\slash": "backslash",
        "text": "\u00e9t\u00e9 \u2014 \U0001f600",
    }
    body, ctype = multipart_body(payload)
    assert parse_multipart(body, ctype) == list(payload.items())


def test_multipart_value_with_line_breaks_and_dashes() -> None:
    payload = {"multi": "line one\r\nline two\n--not-a-boundary\r\n", "dashes": "--"}
    body, ctype = multipart_body(payload)
    assert parse_multipart(body, ctype) == list(payload.items())


def test_multipart_honours_a_given_boundary() -> None:
    body, ctype = multipart_body({"a": "1"}, boundary="fixed-boundary-123")
    assert ctype == "multipart/form-data; boundary=fixed-boundary-123"
    assert body.startswith(b"--fixed-boundary-123\r\n")
    assert body.endswith(b"--fixed-boundary-123--\r\n")
    assert parse_multipart(body, ctype) == [("a", "1")]


def test_multipart_boundaries_are_random() -> None:
    (_, a), (_, b) = multipart_body({"a": "1"}), multipart_body({"a": "1"})
    assert a != b
    assert a.startswith("multipart/form-data; boundary=")


def test_multipart_of_an_empty_payload_is_only_the_close_delimiter() -> None:
    # What browsers send for a form without fields.
    body, _ = multipart_body({}, boundary="b0")
    assert body == b"--b0--\r\n"


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=10).filter(lambda k: "\r" not in k and "\n" not in k),
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20),
        min_size=1,
        max_size=6,
    )
)
def test_multipart_round_trips_any_scalars(payload: dict[str, Any]) -> None:
    body, ctype = multipart_body(payload)
    assert parse_multipart(body, ctype) == [(k, field_text(v)) for k, v in payload.items()]


# --- render ----------------------------------------------------------------------------


def rendered(fmt: str, payload: Any, tenant: str | None = None) -> tuple[bytes, str]:
    return render(fmt, **EVENT, tenant=tenant, payload_json=json.dumps(payload).encode())


def test_formats_are_the_documented_ones() -> None:
    assert FORMATS == ("json", "form", "multipart")


def test_render_json() -> None:
    body, ctype = rendered("json", {"n": 1}, tenant="acme")
    assert ctype == "application/json"
    assert json.loads(body) == {
        "id": EVENT["event_id"],
        "type": EVENT["event_type"],
        "timestamp": EVENT["timestamp"],
        "tenant": "acme",
        "data": {"n": 1},
    }


def test_render_form() -> None:
    body, ctype = rendered("form", PAYLOAD)
    assert ctype == "application/x-www-form-urlencoded"
    check_field_texts({k: v for k, v in parse_qsl(body.decode(), keep_blank_values=True)})


def test_render_multipart() -> None:
    body, ctype = rendered("multipart", PAYLOAD)
    assert ctype.startswith("multipart/form-data; boundary=")
    check_field_texts(dict(parse_multipart(body, ctype)))


@pytest.mark.parametrize("fmt", ["form", "multipart"])
def test_render_keeps_every_digit_of_a_big_integer(fmt: str) -> None:
    big = "123456789012345678901234567890"
    body, ctype = render(fmt, **EVENT, tenant=None, payload_json=b'{"n": ' + big.encode() + b"}")
    if fmt == "form":
        fields = dict(parse_qsl(body.decode(), keep_blank_values=True))
    else:
        fields = dict(parse_multipart(body, ctype))
    assert fields == {"n": big}


@pytest.mark.parametrize("fmt", ["xml", "JSON", "", "form-data", "json "])
def test_render_refuses_an_unknown_format(fmt: str) -> None:
    with pytest.raises(ValueError, match="unknown body format"):
        rendered(fmt, {"n": 1})
