"""Routing by content at scale: the fan-out's cost per event with 10,000 endpoints, half of
them with a content filter, against the same endpoints without filters.

    .venv/bin/python bench/routing.py                    # 10,000 endpoints; ~1 min
    .venv/bin/python bench/routing.py --endpoints 1000 --events 50 --rounds 1

In this process, on a store of its own (a fresh SQLite file in a temporary directory):
N endpoints of one tenant subscribed to `*`, made once. Then, per round, both ways
interleaved:

- "no filters": no endpoint has a filter;
- "filters": every other endpoint has one of four realistic filters of 2-3 conditions on
  data fields (`$gt`/`$gte` on an amount, `$in`/`$ne` on the customer, `$or` with an
  array match, `$prefix` into the items), with thresholds spread so that about a third
  of the filtered endpoints match a given event.

The filters are set and removed through `update_endpoint`, as the API does. Measured per
event, as medians over --events events of a realistic order payload (amounts, tiers and
countries varied): the routing decision alone (webhookd.matching.routed over the store's
endpoints, what both backends' fan-out runs in the publish transaction) and a whole
publish (`Store.publish` of one event: the decision, the event and its deliveries
written and committed). Deliveries per event are shown, since filters make fewer. The
load average before and after is printed: the figures follow the CPU this process gets.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from webhookd import signing
from webhookd.ids import new_id
from webhookd.matching import routed
from webhookd.store.models import NewEvent
from webhookd.store.sqlite import SQLiteStore
from webhookd.timefmt import now_ms

TIERS = ["free", "pro", "gold", "platinum"]
COUNTRIES = ["FR", "DE", "ES", "US", "GB", "IT"]
CURRENCIES = ["EUR", "USD", "GBP"]


def payload(rng: random.Random) -> dict[str, Any]:
    return {
        "order_id": f"ord_{rng.randrange(10**9)}",
        "amount": rng.randrange(1, 5000),
        "currency": rng.choice(CURRENCIES),
        "status": "paid",
        "customer": {
            "id": f"cus_{rng.randrange(10**6)}",
            "email": "ann@example.com",
            "tier": rng.choice(TIERS),
            "country": rng.choice(COUNTRIES),
        },
        "items": [
            {"sku": f"SKU-{rng.randrange(1000, 3000)}", "qty": rng.randrange(1, 4)}
            for _ in range(rng.randrange(1, 4))
        ],
        "tags": rng.sample(["new", "vip", "b2b", "promo", "gift"], 2),
        "shipping": {"country": rng.choice(COUNTRIES), "city": "Lyon", "postcode": "69002"},
    }


def a_filter(i: int, rng: random.Random) -> dict[str, Any]:
    """One of four shapes of 2-3 conditions, thresholds spread."""
    kind = (i // 2) % 4
    if kind == 0:
        return {"data.amount": {"$gt": rng.randrange(0, 3000)}, "data.currency": "EUR"}
    if kind == 1:
        return {
            "data.customer.tier": {"$in": ["gold", "platinum"]},
            "data.amount": {"$gte": rng.randrange(0, 2000)},
            "data.customer.country": {"$ne": "US"},
        }
    if kind == 2:
        return {
            "$or": [{"data.tags": "vip"}, {"data.amount": {"$gt": rng.randrange(2000, 5000)}}],
            "type": {"$prefix": "order."},
        }
    return {
        "data.items.sku": {"$prefix": f"SKU-{rng.randrange(1, 3)}"},
        "data.shipping.country": {"$in": rng.sample(COUNTRIES, 3)},
    }


async def make_endpoints(store: Any, n: int) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, 500):
        made = await asyncio.gather(
            *(
                store.create_endpoint(
                    {
                        "url": f"https://example.com/hooks/{i}",
                        "secret": signing.generate_secret(),
                        "events": ["*"],
                    }
                )
                for i in range(start, min(n, start + 500))
            )
        )
        ids.extend(ep.id for ep in made)
    return ids


async def set_filters(store: Any, ids: list[str], on: bool) -> None:
    rng = random.Random(7)
    for start in range(0, len(ids), 500):
        await asyncio.gather(
            *(
                store.update_endpoint(ep_id, {"filter": a_filter(i, rng) if on else None})
                for i, ep_id in enumerate(ids[start : start + 500], start)
                if i % 2 == 0
            )
        )


def events(n: int, seed: int) -> list[NewEvent]:
    rng = random.Random(seed)
    return [
        NewEvent(
            id=new_id("evt"),
            type="order.paid",
            tenant=None,
            payload_json=orjson.dumps(payload(rng)),
            body_hash=None,
            deliver_at=None,
        )
        for _ in range(n)
    ]


async def measure(store: Any, n: int, seed: int) -> dict[str, float]:
    endpoints = store.endpoints()
    decide: list[float] = []
    routed_to: list[int] = []
    for ev in events(n, seed):
        t0 = time.perf_counter()
        got = routed(endpoints, ev, now_ms())
        decide.append(time.perf_counter() - t0)
        routed_to.append(len(got))
    publish: list[float] = []
    for ev in events(n, seed + 1):
        t0 = time.perf_counter()
        await store.publish([ev])
        publish.append(time.perf_counter() - t0)
    return {
        "decide_ms": statistics.median(decide) * 1000,
        "publish_ms": statistics.median(publish) * 1000,
        "deliveries": statistics.mean(routed_to),
    }


async def main(args: argparse.Namespace) -> None:
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="webhookd-routing-") as tmp:
        store = SQLiteStore(str(Path(tmp) / "routing.db"))
        await store.open()
        await store.sync_event_types([])
        await store.create_event_type("order.paid", "An order was paid.")
        try:
            t0 = time.perf_counter()
            ids = await make_endpoints(store, args.endpoints)
            print(f"{len(ids):,} endpoints made in {time.perf_counter() - t0:.1f} s")
            rows: dict[str, list[dict[str, float]]] = {"no filters": [], "filters": []}
            for r in range(args.rounds):
                for way in ("no filters", "filters") if r % 2 == 0 else ("filters", "no filters"):
                    await set_filters(store, ids, way == "filters")
                    rows[way].append(await measure(store, args.events, seed=r))
        finally:
            await store.close()
    report(rows, args)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def report(rows: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    print(
        f"\n{args.endpoints:,} endpoints (SQLite), {args.events} events per way and round, "
        f"{args.rounds} rounds; medians per event, the rounds' range in brackets\n"
    )
    print("| endpoints | routing decision ms | publish ms | deliveries per event |")
    print("|---|---:|---:|---:|")

    def cell(way: str, key: str, fmt: str) -> str:
        values = [r[key] for r in rows[way]]
        mid = statistics.median(values)
        return f"{mid:{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"

    for way in ("no filters", "filters"):
        print(
            f"| {way} | {cell(way, 'decide_ms', '.2f')} | {cell(way, 'publish_ms', '.1f')} | "
            f"{cell(way, 'deliveries', ',.0f')} |"
        )
    ratio = [
        f["decide_ms"] / p["decide_ms"]
        for f, p in zip(rows["filters"], rows["no filters"], strict=True)
    ]
    print(f"\nrouting decision, filters / no filters: {statistics.median(ratio):.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=100, help="per way and round")
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
