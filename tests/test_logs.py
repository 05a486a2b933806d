"""Logs: one line per significant action, stable field names, attempts only at debug."""

from __future__ import annotations

import json
import signal
from typing import Any

from aiohttp import web

from tests.conftest import Daemon, wait_until


def lines(d: Daemon) -> list[dict[str, Any]]:
    return [json.loads(line) for line in d.log_text().splitlines() if line.startswith("{")]


async def test_json_lines_with_stable_fields(make_daemon: Any, make_receiver: Any) -> None:
    ok = await make_receiver()
    gone = await make_receiver(responder=lambda r, b: web.Response(status=410))
    failing = await make_receiver(default=500)
    d: Daemon = await make_daemon(
        {"log": {"format": "json", "level": "info"}, "delivery": {"retry_schedule_s": [0.1]}}
    )
    await d.endpoint(ok.url)
    gone_ep = await d.endpoint(gone.url)
    fail_ep = await d.endpoint(failing.url)
    for _ in range(3):
        await d.publish()
    await ok.wait_for(3)

    def seen(event: str) -> bool:
        return any(x.get("event") == event for x in lines(d))

    await wait_until(lambda: seen("endpoint_disabled"), 10, "endpoint_disabled")
    await wait_until(lambda: seen("delivery_failed"), 10, "delivery_failed")
    d.signal(signal.SIGHUP)
    await wait_until(lambda: seen("reloaded"), 10, "reloaded")
    assert await d.stop() == 0
    records = lines(d)
    for rec in records:
        assert {"ts", "level", "logger", "event", "msg"} <= set(rec), rec
        assert rec["ts"].endswith("Z")
    by_event: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_event.setdefault(rec["event"], []).append(rec)
    startup = by_event["startup"][0]
    assert {"version", "listen", "database", "workers"} <= set(startup)
    [disabled] = by_event["endpoint_disabled"]
    assert disabled["endpoint_id"] == gone_ep["id"] and disabled["reason"] == "gone"
    assert {x["endpoint_id"] for x in by_event["delivery_failed"]} == {fail_ep["id"]}
    assert "stopped" in by_event
    # At info level there is no per-attempt line.
    assert "attempt" not in by_event


async def test_text_format_is_one_line_per_record(make_daemon: Any) -> None:
    d: Daemon = await make_daemon({"log": {"format": "text"}})
    assert await d.stop() == 0
    text = d.log_text()
    startup = [line for line in text.splitlines() if "event=startup" in line]
    assert len(startup) == 1
    assert " info webhookd started " in startup[0]
    assert "event=stopped" in text
