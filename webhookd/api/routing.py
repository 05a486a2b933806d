"""Checking the routing fields of the API: an endpoint's `filter` and `channels`, and an
event's `channels` (what they mean at fan-out: webhookd.matching.routed)."""

from __future__ import annotations

from typing import Any

from webhookd.api.validate import Loc, Problems
from webhookd.config import EVENT_TYPE_RE
from webhookd.filters import FilterError, check_size, compile_filter

MAX_ENDPOINT_CHANNELS = 50
MAX_EVENT_CHANNELS = 10
MAX_CHANNEL_CHARS = 128
CHANNEL_FORM = "dot-separated segments of [a-zA-Z0-9_-], at most 128 characters"


def check_filter(value: Any, problems: Problems, loc: Loc = ("body", "filter")) -> Any:
    """An endpoint's filter as stored (null: none), with each problem's `loc` naming the
    place inside the filter, e.g. ["body", "filter", "data.amount", "$gt"]."""
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.add(loc, 'expected null or an object such as {"data.amount": {"$gt": 100}}')
        return None
    too_large = check_size(value)
    if too_large is not None:
        problems.add(loc, too_large)
        return None
    try:
        compile_filter(value)
    except FilterError as exc:
        for where, msg in exc.problems:
            problems.add((*loc, *where), msg)
        return None
    return value


def check_channels(
    value: Any, problems: Problems, loc: Loc, *, most: int, nullable: bool = True
) -> list[str] | None:
    """A list of channel names without repeats (in the order given), or None."""
    if value is None and nullable:
        return None
    if not isinstance(value, list):
        problems.add(loc, f"expected {'null or ' if nullable else ''}a list of channel names")
        return None
    if len(value) > most:
        problems.add(loc, f"expected at most {most} channels")
        return None
    out: list[str] = []
    ok = True
    for i, name in enumerate(value):
        if (
            not isinstance(name, str)
            or len(name) > MAX_CHANNEL_CHARS
            or not EVENT_TYPE_RE.fullmatch(name)
        ):
            problems.add((*loc, i), f"expected a channel name: {CHANNEL_FORM}")
            ok = False
        elif name not in out:
            out.append(name)
    return out if ok else None


def endpoint_fields(body: dict[str, Any], problems: Problems, out: dict[str, Any]) -> None:
    """`filter` and `channels` of a create or PATCH body, into `out`."""
    if "filter" in body:
        out["filter"] = check_filter(body["filter"], problems)
    if "channels" in body:
        loc = ("body", "channels")
        channels = check_channels(body["channels"], problems, loc, most=MAX_ENDPOINT_CHANNELS)
        if channels == []:
            problems.add(loc, "expected at least one channel; null receives every event")
        out["channels"] = channels


def event_channels(body: dict[str, Any], loc: Loc, problems: Problems) -> tuple[str, ...] | None:
    """The channels of a published event (None: none; an empty list is none too)."""
    channels = check_channels(
        body.get("channels"), problems, (*loc, "channels"), most=MAX_EVENT_CHANNELS
    )
    return tuple(channels) if channels else None
