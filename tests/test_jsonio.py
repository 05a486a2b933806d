"""Request bodies parse to exactly what the standard library would give, fast path or not."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webhookd import jsonio

DOCS = [
    b'{"a":1}',
    b' {"a": [1, 2.5, {"b": null, "c": true}], "d": "\\u00e9"} ',
    b'{"big":12345678901234567890123}',
    b'{"edge":9223372036854775807,"neg":-9223372036854775808,"u64":18446744073709551615}',
    b'{"n":-123456789012345678901234567890}',
    b'{"f":0.1,"g":1e-7,"h":123456789.123456789}',
    b'{"big":1.7976931348623157e308,"tiny":5e-324,"under":1e-400,"e":1E+100}',
    b'{"s":"\\ud800"}',
    b'{"a":1,"a":2}',
]


@pytest.mark.parametrize("doc", DOCS)
def test_same_value_as_the_standard_library(doc: bytes) -> None:
    value = jsonio.loads(doc)
    assert value == json.loads(doc)
    assert repr(value) == repr(json.loads(doc))  # int stays int, exactly


@pytest.mark.parametrize(
    "doc",
    [b'{"a":NaN}', b'{"a":Infinity}', b"[1]x", b"", b"\xff", b'{"a":1.5e400}', b"[-1E+309]"],
)
def test_refusals(doc: bytes) -> None:
    with pytest.raises(jsonio.JSONError):
        jsonio.loads(doc)


json_values: Any = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(json_values)
def test_round_trip_keeps_every_value(value: Any) -> None:
    doc = json.dumps(value).encode()
    assert repr(jsonio.loads(doc)) == repr(json.loads(doc))


@pytest.mark.parametrize(
    ("doc", "slow"),
    [
        (b'{"n":1234567890123456789}', True),  # 19 digits: may be beyond 64 bits
        (b'{"n":-98765432109876543210}', True),
        (b'{"f":0.12345678901234567890}', True),  # long fractions are checked too
        (b'{"x":1e308}', True),  # 3-digit exponents: may be beyond the float range
        (b'{"x":1E+308}', True),
        (b'{"x":2e-308}', True),
        (b'{"x":[1e30, -1234, 123456789012345678]}', False),  # 18 digits fit in 64 bits
        (b'{"date":"2026-11-23","amount":-4200,"e":"Lyon"}', False),
    ],
)
def test_which_documents_take_the_exact_path(doc: bytes, slow: bool) -> None:
    """The fast parser is used only where it cannot differ from the standard library;
    the answer is the standard library's either way."""
    assert jsonio._needs_slow_path(doc) is slow
    assert jsonio.loads(doc) == json.loads(doc)
