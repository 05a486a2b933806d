"""The filter compiler (webhookd.filters): every operator, nesting, JSON type mismatches,
arrays, missing paths, and the limits, as tables of (filter, envelope) -> match; and what
the fan-out (webhookd.matching.routed) makes of filters and channels."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from webhookd.filters import (
    MAX_CONDITIONS,
    MAX_DEPTH,
    MAX_IN_VALUES,
    Document,
    FilterError,
    compile_filter,
    compile_stored,
    envelope,
    json_equal,
)
from webhookd.ids import new_id
from webhookd.matching import routed
from webhookd.signing import SignatureSpec
from webhookd.store.models import Endpoint, NewEvent

PAYLOAD: dict[str, Any] = {
    "amount": 150,
    "price": 9.5,
    "currency": "EUR",
    "paid": True,
    "note": None,
    "customer": {"tier": "gold", "country": "FR", "id": "cus_42"},
    "tags": ["vip", "new"],
    "items": [{"sku": "a-1", "qty": 2}, {"sku": "b-2", "qty": 5}],
    "matrix": [[1, 2], [3]],
    "empty": {},
}
ENV = envelope(
    "evt_1", "order.paid", 1_767_225_600_000, "acme", orjson.dumps(PAYLOAD)
)  # 2026-01-01T00:00:00.000Z


def matches(spec: dict[str, Any], env: dict[str, Any] | None = None) -> bool:
    return compile_filter(spec).matches(ENV if env is None else env)


# (filter, expected) against ENV
TABLE: list[tuple[dict[str, Any], bool]] = [
    # equality by value, on every kind of JSON value
    ({"data.amount": 150}, True),
    ({"data.amount": 150.0}, True),  # 1 == 1.0
    ({"data.amount": 151}, False),
    ({"data.amount": "150"}, False),  # no conversion between types
    ({"data.paid": True}, True),
    ({"data.paid": 1}, False),  # true is not 1
    ({"data.amount": True}, False),
    ({"data.currency": "EUR"}, True),
    ({"data.currency": "eur"}, False),
    ({"data.customer": {"country": "FR", "id": "cus_42", "tier": "gold"}}, True),  # any order
    ({"data.customer": {"tier": "gold"}}, False),  # an object equals only the whole object
    ({"data.empty": {}}, True),
    ({"data.customer.tier": "gold", "data.customer.country": "FR"}, True),  # keys: all hold
    ({"data.customer.tier": "gold", "data.customer.country": "DE"}, False),
    ({}, True),  # no condition: every event
    # the envelope's own fields
    ({"type": "order.paid"}, True),
    ({"type": {"$prefix": "order."}}, True),
    ({"type": {"$prefix": "invoice."}}, False),
    ({"tenant": "acme"}, True),
    ({"id": {"$in": ["evt_1", "evt_2"]}}, True),
    ({"timestamp": {"$gte": "2026-01-01T00:00:00.000Z"}}, True),
    ({"timestamp": {"$lt": "2026-01-01T00:00:00.000Z"}}, False),
    ({"data": {"$exists": True}}, True),
    # $eq / $ne
    ({"data.amount": {"$eq": 150}}, True),
    ({"data.amount": {"$ne": 150}}, False),
    ({"data.amount": {"$ne": "150"}}, True),
    ({"data.customer": {"$eq": {"tier": "gold", "country": "FR", "id": "cus_42"}}}, True),
    # $gt $gte $lt $lte: numbers with numbers, strings with strings
    ({"data.amount": {"$gt": 100}}, True),
    ({"data.amount": {"$gt": 150}}, False),
    ({"data.amount": {"$gte": 150}}, True),
    ({"data.amount": {"$lt": 150.5}}, True),
    ({"data.amount": {"$lte": 149}}, False),
    ({"data.price": {"$gt": 9, "$lt": 10}}, True),  # two operators: both hold
    ({"data.price": {"$gt": 9, "$lt": 9.4}}, False),
    ({"data.amount": {"$gt": "100"}}, False),  # a number against a string: false...
    ({"data.amount": {"$lt": "100"}}, False),  # ...both ways
    ({"data.currency": {"$gt": 1}}, False),
    ({"data.currency": {"$gt": "EAA"}}, True),  # strings by code point
    ({"data.currency": {"$lt": "EUA"}}, False),
    ({"data.paid": {"$gt": 0}}, False),  # a boolean is not a number
    ({"data.note": {"$lt": 1}}, False),
    ({"data.customer": {"$gt": 1}}, False),
    # $in / $nin
    ({"data.currency": {"$in": ["USD", "EUR"]}}, True),
    ({"data.currency": {"$in": ["USD"]}}, False),
    ({"data.currency": {"$nin": ["USD"]}}, True),
    ({"data.currency": {"$nin": ["EUR"]}}, False),
    ({"data.amount": {"$in": [150.0]}}, True),
    ({"data.amount": {"$in": ["150", True]}}, False),
    ({"data.paid": {"$in": [1]}}, False),
    ({"data.paid": {"$in": [True]}}, True),
    ({"data.customer": {"$in": [{"tier": "gold", "country": "FR", "id": "cus_42"}]}}, True),
    ({"data.currency": {"$in": []}}, False),
    ({"data.currency": {"$nin": []}}, True),
    # $exists
    ({"data.note": {"$exists": True}}, True),  # present, even as null
    ({"data.nope": {"$exists": True}}, False),
    ({"data.nope": {"$exists": False}}, True),
    ({"data.customer.tier.x": {"$exists": False}}, True),  # through a string: missing
    # $prefix
    ({"data.customer.id": {"$prefix": "cus_"}}, True),
    ({"data.customer.id": {"$prefix": "CUS_"}}, False),
    ({"data.amount": {"$prefix": "1"}}, False),  # only strings have prefixes
    # a missing path: only $exists false, $ne, $nin and null equality hold
    ({"data.nope": 1}, False),
    ({"data.nope": {"$gt": 0}}, False),
    ({"data.nope": {"$lt": 0}}, False),
    ({"data.nope": {"$in": [1]}}, False),
    ({"data.nope": {"$prefix": ""}}, False),
    ({"data.nope": {"$ne": 1}}, True),
    ({"data.nope": {"$nin": [1]}}, True),
    ({"data.nope": None}, True),
    ({"data.nope": {"$in": [None]}}, True),
    ({"data.nope": {"$nin": [None]}}, False),
    ({"data.note": None}, True),
    ({"data.note": {"$ne": None}}, False),
    ({"data.amount": {"$ne": None}}, True),
    ({"data.amount": None}, False),
    ({"data.nope.deeper": "x"}, False),
    # arrays: the whole array or any element; paths go into elements; indexes
    ({"data.tags": "vip"}, True),
    ({"data.tags": "old"}, False),
    ({"data.tags": ["vip", "new"]}, True),
    ({"data.tags": ["new", "vip"]}, False),  # an array equals only the same order
    ({"data.tags": {"$in": ["old", "new"]}}, True),
    ({"data.tags": {"$nin": ["old", "new"]}}, False),
    ({"data.tags": {"$ne": "vip"}}, False),
    ({"data.tags": {"$prefix": "ne"}}, True),
    ({"data.tags.0": "vip"}, True),
    ({"data.tags.1": "vip"}, False),
    ({"data.tags.5": {"$exists": False}}, True),
    ({"data.items.sku": "b-2"}, True),
    ({"data.items.sku": "c-3"}, False),
    ({"data.items.qty": {"$gt": 4}}, True),  # any element
    ({"data.items.qty": {"$gt": 5}}, False),
    ({"data.items.1.qty": 5}, True),
    ({"data.items.0.qty": 5}, False),
    ({"data.items.price": {"$exists": False}}, True),
    ({"data.items.price": {"$exists": True}}, False),
    ({"data.matrix": [3]}, True),  # an element that is an array
    ({"data.matrix": 3}, False),  # elements of elements are not searched
    # $not around operators, $and, $or, $not around filters, nesting
    ({"data.amount": {"$not": {"$gt": 200}}}, True),
    ({"data.amount": {"$not": {"$gt": 100}}}, False),
    ({"data.nope": {"$not": {"$gt": 1}}}, True),  # not (missing > 1)
    ({"data.amount": {"$not": {"$gt": 100, "$lt": 120}}}, True),  # not (both)
    ({"$and": [{"data.amount": {"$gt": 100}}, {"data.currency": "EUR"}]}, True),
    ({"$and": [{"data.amount": {"$gt": 100}}, {"data.currency": "USD"}]}, False),
    ({"$or": [{"data.amount": {"$gt": 1000}}, {"data.customer.tier": "gold"}]}, True),
    ({"$or": [{"data.amount": {"$gt": 1000}}, {"data.customer.tier": "silver"}]}, False),
    ({"$not": {"data.currency": "EUR"}}, False),
    ({"$not": {"data.currency": "USD"}}, True),
    ({"$not": {"data.currency": "EUR", "data.amount": 1}}, True),  # not (both)
    (
        {
            "type": {"$prefix": "order."},
            "$or": [
                {"data.customer.tier": {"$in": ["gold", "platinum"]}},
                {"$and": [{"data.amount": {"$gte": 1000}}, {"$not": {"data.paid": False}}]},
            ],
        },
        True,
    ),
    (
        {
            "$or": [
                {"data.customer.tier": "silver"},
                {"$and": [{"data.amount": {"$gte": 100}}, {"$not": {"data.paid": True}}]},
            ]
        },
        False,
    ),
]


@pytest.mark.parametrize(
    ("spec", "expected"), TABLE, ids=[orjson.dumps(s).decode() for s, _ in TABLE]
)
def test_operator_table(spec: dict[str, Any], expected: bool) -> None:
    assert matches(spec) is expected


def test_the_envelope_is_what_the_receiver_gets() -> None:
    env = envelope("evt_9", "a.b", 1_767_225_600_123, None, b'{"x": [1]}')
    assert env == {
        "id": "evt_9",
        "type": "a.b",
        "timestamp": "2026-01-01T00:00:00.123Z",
        "data": {"x": [1]},
    }  # no tenant member without a tenant, as in the json body
    assert matches({"tenant": None}, env) and matches({"tenant": {"$exists": False}}, env)
    assert not matches({"tenant": {"$exists": True}}, env)


def test_json_equality_keeps_types_apart() -> None:
    assert json_equal(1, 1.0) and json_equal({"a": [1, {"b": None}]}, {"a": [1.0, {"b": None}]})
    assert not json_equal(True, 1) and not json_equal(0, False) and not json_equal(None, False)
    assert not json_equal([1], [1, 1]) and not json_equal({"a": 1}, {"b": 1})
    assert not json_equal("1", 1)


# (filter, loc inside the filter, words of the message)
BAD: list[tuple[Any, tuple[str | int, ...], str]] = [
    ([1], (), "expected an object"),
    ("data.x", (), "expected an object"),
    ({"data.amount": {"$gt": [1]}}, ("data.amount", "$gt"), "number or a string"),
    ({"data.amount": {"$gt": True}}, ("data.amount", "$gt"), "number or a string"),
    ({"data.amount": {"$lte": None}}, ("data.amount", "$lte"), "number or a string"),
    ({"data.amount": {"$in": 3}}, ("data.amount", "$in"), "needs a list"),
    ({"data.amount": {"$nin": "ab"}}, ("data.amount", "$nin"), "needs a list"),
    ({"data.amount": {"$exists": 1}}, ("data.amount", "$exists"), "true or false"),
    ({"data.amount": {"$prefix": 1}}, ("data.amount", "$prefix"), "needs a string"),
    ({"data.amount": {"$regex": "x"}}, ("data.amount", "$regex"), "unknown operator"),
    ({"data.amount": {"$gt": 1, "max": 2}}, ("data.amount",), "mixes operators"),
    ({"data.amount": {"$not": 5}}, ("data.amount", "$not"), "operator object"),
    ({"data.amount": {"$not": {"x": 5}}}, ("data.amount", "$not"), "operator object"),
    ({"$nor": [{"type": "a"}]}, ("$nor",), "unknown operator"),
    ({"$and": []}, ("$and",), "non-empty list"),
    ({"$or": {"type": "a"}}, ("$or",), "non-empty list"),
    ({"$or": [{"type": "a"}, 3]}, ("$or", 1), "expected an object"),
    ({"$and": [{"amount": 1}]}, ("$and", 0, "amount"), "a path starts with one of"),
    ({"$not": [{"type": "a"}]}, ("$not",), "expected an object"),
    ({"amount": 1}, ("amount",), "data.amount"),
    ({"data..amount": 1}, ("data..amount",), "dotted path"),
    ({"data.": 1}, ("data.",), "dotted path"),
    ({"type.name": 1}, ("type.name",), "only data."),
    ({"data." + "x" * 300: 1}, ("data." + "x" * 300,), "at most 256"),
    (
        {"data.c": {"$in": list(range(MAX_IN_VALUES + 1))}},
        ("data.c", "$in"),
        f"at most {MAX_IN_VALUES} values",
    ),
    ({f"data.f{i}": i for i in range(MAX_CONDITIONS + 1)}, (), f"at most {MAX_CONDITIONS}"),
]


@pytest.mark.parametrize(("spec", "loc", "words"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_a_bad_filter_names_the_place_and_the_reason(
    spec: Any, loc: tuple[str | int, ...], words: str
) -> None:
    with pytest.raises(FilterError) as caught:
        compile_filter(spec)
    assert any(where == loc and words in msg for where, msg in caught.value.problems), (
        caught.value.problems
    )


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(FilterError) as caught:
        compile_filter({"data.a": {"$gt": []}, "b": 1, "data.c": {"$nope": 1}})
    assert [loc for loc, _ in caught.value.problems] == [
        ("data.a", "$gt"),
        ("b",),
        ("data.c", "$nope"),
    ]


def test_conditions_are_counted_across_the_whole_filter() -> None:
    half = MAX_CONDITIONS // 2
    ok = {"$or": [{f"data.a{i}": {"$gt": i, "$lt": i + 10} for i in range(half // 2)}]}
    ok["$and"] = [{f"data.b{i}": i} for i in range(MAX_CONDITIONS - 2 * (half // 2))]
    assert compile_filter(ok).conditions == MAX_CONDITIONS
    too_many = {**ok, "data.last": {"$exists": True}}
    with pytest.raises(FilterError, match=f"has {MAX_CONDITIONS + 1} conditions"):
        compile_filter(too_many)


def test_nesting_is_bounded() -> None:
    spec: dict[str, Any] = {"type": "a"}
    for _ in range(MAX_DEPTH):
        spec = {"$not": spec}
    assert compile_filter(spec).matches(ENV) is (MAX_DEPTH % 2 == 1)
    with pytest.raises(FilterError, match="nested more than"):
        compile_filter({"$and": [spec]})
    field: dict[str, Any] = {"$gt": 1}
    for _ in range(MAX_DEPTH + 1):
        field = {"$not": field}
    with pytest.raises(FilterError, match="nested more than"):
        compile_filter({"data.amount": field})


def test_a_stored_filter_that_no_longer_compiles_matches_nothing() -> None:
    assert compile_stored(None) is None
    broken = compile_stored({"data.amount": {"$bogus": 1}})
    assert broken is not None and not broken.matches(ENV)
    assert compile_stored({"type": "order.paid"}).matches(ENV)  # type: ignore[union-attr]


# --- the fan-out: patterns, channels and filters together -------------------------------


def endpoint(n: int, **fields: Any) -> Endpoint:
    base: dict[str, Any] = {
        "id": f"ep_{n}",
        "url": f"https://example.com/{n}",
        "tenant": None,
        "description": "",
        "metadata": {},
        "events": ("*",),
        "active": True,
        "disabled_reason": None,
        "secret": "whsec_x",
        "previous_secrets": (),
        "signature": SignatureSpec(),
        "formats": ("json",),
        "format_is_list": False,
        "headers": {},
        "delay_s": 0.0,
        "rate_limit_per_s": None,
        "max_in_flight": None,
        "ordered": False,
        "last_success_at": None,
        "failing_since": None,
        "created_at": 0,
        "updated_at": 0,
    }
    return Endpoint(**{**base, **fields})


def event(payload: Any, channels: tuple[str, ...] | None = None, **kw: Any) -> NewEvent:
    return NewEvent(
        id=new_id("evt"),
        type=kw.get("type", "order.paid"),
        tenant=kw.get("tenant"),
        payload_json=orjson.dumps(payload),
        body_hash=None,
        deliver_at=None,
        channels=channels,
    )


def ids(eps: list[Endpoint]) -> list[str]:
    return [e.id for e in eps]


def test_routed_applies_patterns_tenant_channels_and_filters() -> None:
    eps = [
        endpoint(0),
        endpoint(1, channels=("eu",)),
        endpoint(2, channels=("us", "eu")),
        endpoint(3, filter={"data.amount": {"$gt": 100}}),
        endpoint(4, filter={"data.amount": {"$gt": 100}}, channels=("us",)),
        endpoint(5, events=("invoice.*",)),
        endpoint(6, tenant="acme"),
        endpoint(7, filter={"tenant": "acme"}, tenant="acme"),
    ]
    assert ids(routed(eps, event({"amount": 500}), 0)) == ["ep_0", "ep_3"]
    assert ids(routed(eps, event({"amount": 5}), 0)) == ["ep_0"]
    assert ids(routed(eps, event({"amount": 500}, ("eu",)), 0)) == ["ep_0", "ep_1", "ep_2", "ep_3"]
    assert ids(routed(eps, event({"amount": 500}, ("us", "x")), 0)) == [
        "ep_0",
        "ep_2",
        "ep_3",
        "ep_4",
    ]
    assert ids(routed(eps, event({}, ("eu",), tenant="acme"), 0)) == ["ep_6", "ep_7"]


def test_routed_parses_the_payload_only_when_a_candidate_has_a_filter() -> None:
    # A payload that does not parse shows whether it was parsed.
    unparsable = event({})
    unparsable.payload_json = b"not json"
    plain = [endpoint(0), endpoint(1, channels=("eu",))]
    assert ids(routed(plain, unparsable, 0)) == ["ep_0"]
    other_tenant = [*plain, endpoint(2, tenant="acme", filter={"type": "x"})]
    assert ids(routed(other_tenant, unparsable, 0)) == ["ep_0"]
    with pytest.raises(orjson.JSONDecodeError):
        routed([*plain, endpoint(3, filter={"type": "x"})], unparsable, 0)


def test_a_filter_is_compiled_once_and_shared_by_equal_filters() -> None:
    ep = endpoint(0, filter={"data.amount": {"$gt": 100}, "type": "order.paid"})
    first = ep.compiled_filter
    assert first is not None and ep.compiled_filter is first
    for n in (1, 500, 7):
        routed([ep], event({"amount": n}), 0)
    assert ep.compiled_filter is first
    # A new object for a change of health (as both stores make) finds it again, as does
    # another endpoint with the same filter, in any key order.
    assert dataclasses.replace(ep, last_success_at=5).compiled_filter is first
    same = endpoint(1, filter={"type": "order.paid", "data.amount": {"$gt": 100}})
    assert same.compiled_filter is first
    assert endpoint(2, filter={"data.amount": {"$gt": 101}}).compiled_filter is not first


def test_paths_are_resolved_once_per_event_and_shared_filters_tested_once() -> None:
    filters = [
        compile_filter({"data.amount": {"$gt": n}, "data.customer.tier": "gold"}) for n in range(3)
    ]
    doc = Document(ENV)
    assert [f.test(doc) for f in filters] == [True, True, True]
    assert doc.values == {"data.amount": 150, "data.customer.tier": "gold"}
    # Endpoints sharing a filter: routed tests it once per event (a counting filter).
    calls: list[int] = []
    counting = compile_stored({"data.amount": {"$gt": 100}})
    assert counting is not None
    real = counting.test
    counting.test = lambda d: calls.append(1) or real(d)  # type: ignore[method-assign]
    try:
        eps = [endpoint(i, filter={"data.amount": {"$gt": 100}}) for i in range(5)]
        assert len(routed(eps, event({"amount": 500}), 0)) == 5
        assert calls == [1]
    finally:
        counting.test = real  # type: ignore[method-assign]
