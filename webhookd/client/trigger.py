"""`webhookd trigger TYPE [--payload JSON]`: publish one event the quick way, with the
type's example payload when the catalog has one, and show where it went."""

from __future__ import annotations

import argparse
from typing import Any

from webhookd.client.api import Api, run_command
from webhookd.client.args import json_object
from webhookd.client.commands import common_options
from webhookd.client.routing_options import add_event_options
from webhookd.client.views import EVENT_DELIVERY_COLUMNS, table


async def trigger(api: Api, args: argparse.Namespace) -> dict[str, Any]:
    payload = args.payload
    if payload is None:
        known = {t["name"]: t for t in await api.list_event_types()}
        example = known.get(args.type, {}).get("example")
        payload = example if isinstance(example, dict) else {}
    published = await api.publish(args.type, payload, tenant=args.tenant, channels=args.channel)
    event = await api.get_event(published["id"], tenant=published.get("tenant"))
    return {**published, "payload": payload, "delivery_list": event["deliveries"]}


def render(doc: Any, _args: argparse.Namespace) -> str:
    n = doc["deliveries"]
    head = f"published {doc['id']} ({doc['type']}) to {n} endpoint{'' if n == 1 else 's'}"
    if not doc["delivery_list"]:
        return (
            head + "\n(no endpoint subscribes to it: create one with `webhookd endpoints create`)"
        )
    return head + "\n" + table(doc["delivery_list"], EVENT_DELIVERY_COLUMNS, "")


def add_trigger(sub: Any) -> None:
    p = sub.add_parser(
        "trigger",
        parents=[common_options()],
        help="publish an event (the type's example payload, or {}) and show its deliveries",
        description="Publish one event of TYPE (its example payload unless --payload is "
        "given) and print the event id and its deliveries.",
    )
    p.add_argument("type", metavar="TYPE", help="event type, e.g. order.created")
    p.add_argument("--payload", type=json_object, metavar="JSON", help="the payload object")
    p.add_argument("--tenant", help="publish to this tenant's endpoints")
    add_event_options(p)
    p.set_defaults(func=lambda args: run_command(trigger, render, args))
