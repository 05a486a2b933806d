"""An endpoint's `events` filter: `*`, prefix patterns and exact names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webhookd.matching import pattern_matches, subscribed

segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCXYZ0123456789_-", min_size=1, max_size=8)
event_type = st.lists(segment, min_size=1, max_size=4).map(".".join)


@pytest.mark.parametrize("name", ["call.completed", "call", "a.b.c.d", "x", "webhookdx.y"])
def test_star_matches_every_application_type(name: str) -> None:
    assert pattern_matches("*", name)


@pytest.mark.parametrize(
    "name", ["webhookd.endpoint.disabled", "webhookd.delivery.failed", "webhookd.test"]
)
def test_star_leaves_out_webhookds_own_types(name: str) -> None:
    assert not pattern_matches("*", name)
    assert pattern_matches("webhookd.*", name)
    assert subscribed(["*", name], name)


@pytest.mark.parametrize("name", ["call.completed", "call.a.b", "call.started", "call.x-y_z"])
def test_prefix_pattern_matches_deeper_names(name: str) -> None:
    assert pattern_matches("call.*", name)


@pytest.mark.parametrize(
    "name", ["call", "calls.x", "calls", "recall.completed", "xcall.completed", "invoice.paid"]
)
def test_prefix_pattern_needs_the_whole_segment_and_a_dot(name: str) -> None:
    assert not pattern_matches("call.*", name)


def test_nested_prefix_pattern() -> None:
    assert pattern_matches("webhookd.delivery.*", "webhookd.delivery.failed")
    assert pattern_matches("webhookd.*", "webhookd.delivery.failed")
    assert not pattern_matches("webhookd.delivery.*", "webhookd.endpoint.disabled")
    assert not pattern_matches("webhookd.delivery.*", "webhookd.delivery")


def test_exact_names_match_only_themselves() -> None:
    assert pattern_matches("call.completed", "call.completed")
    assert not pattern_matches("call.completed", "call.completed.late")
    assert not pattern_matches("call.completed", "call")
    assert not pattern_matches("call.completed", "call.complete")
    assert not pattern_matches("call", "call.completed")
    assert not pattern_matches("call.completed", "Call.Completed")


def test_subscribed_is_any_pattern() -> None:
    assert subscribed(["invoice.paid", "call.*"], "call.completed")
    assert subscribed(["invoice.paid", "call.*"], "invoice.paid")
    assert not subscribed(["invoice.paid", "call.*"], "invoice.created")
    assert subscribed(["*"], "anything.at.all")
    assert not subscribed([], "call.completed")
    assert subscribed(iter(["call.*"]), "call.x")


@given(event_type, event_type)
def test_prefix_pattern_agrees_with_segments(prefix: str, name: str) -> None:
    expected = name.split(".")[: len(prefix.split("."))] == prefix.split(".") and len(
        name.split(".")
    ) > len(prefix.split("."))
    assert pattern_matches(prefix + ".*", name) == expected


@given(event_type, event_type)
def test_exact_pattern_is_equality(pattern: str, name: str) -> None:
    assert pattern_matches(pattern, name) == (pattern == name)
    assert pattern_matches(name, name)
    assert pattern_matches(name + ".*", name + "." + pattern)
