"""The routing options of the client commands: an endpoint's `--filter` and `--channel`,
and the `--channel` of a published event (what they mean: docs/routing.md)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def filter_object(text: str) -> dict[str, Any] | str:
    """A filter as JSON (the daemon judges it), or "none" to remove it."""
    if text.lower() == "none":
        return "none"
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            'expected a JSON object, e.g. {"data.amount": {"$gt": 100}}'
        )
    return value


def add_endpoint_options(p: argparse.ArgumentParser, *, creating: bool) -> None:
    p.add_argument(
        "--filter",
        type=filter_object,
        metavar="JSON" if creating else "JSON|none",
        help='only events whose envelope matches, e.g. \'{"data.amount": {"$gt": 100}}\''
        + ("" if creating else "; none: every event"),
    )
    p.add_argument(
        "--channel",
        action="append",
        metavar="NAME",
        help="only events published with one of these channels (repeat"
        + ("" if creating else "; on update replaces them all")
        + ")",
    )
    if not creating:
        p.add_argument(
            "--no-channels",
            action="store_true",
            help="remove the channels: every event, with or without channels",
        )


def endpoint_fields(args: argparse.Namespace) -> dict[str, Any]:
    """`filter` and `channels` of an endpoint body, for the options given."""
    out: dict[str, Any] = {}
    flt = getattr(args, "filter", None)
    if flt is not None:
        out["filter"] = None if flt == "none" else flt
    if getattr(args, "channel", None):
        out["channels"] = list(args.channel)
    elif getattr(args, "no_channels", False):
        out["channels"] = None
    return out


def add_event_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--channel",
        action="append",
        metavar="NAME",
        help="a channel of the event (repeat): endpoints with channels get it only if they "
        "share one",
    )
