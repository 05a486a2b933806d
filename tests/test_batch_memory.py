"""Batches in bounded memory: four maximum batches at once against a real daemon.

A 16 MiB batch of small events once took about 500 MiB of the daemon's memory as Python
objects (31 times its size), and four at once 1.8 GB. The daemon's peak resident size
(VmHWM, from /proc) may grow by less than 300 MiB over four concurrent maximum batches:
first the issue's own (16 MiB of `{"type": …, "payload": {}}`, refused past 1,000
events), then 1,000 events with payloads of many small objects (accepted).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import Daemon
from webhookd import jsonio

MAX_BATCH = 16 * 1024 * 1024
BUDGET = 300 * 1024 * 1024

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024
    return out


def small_events_batch() -> bytes:
    """As many `{"type": "call.completed", "payload": {}}` as fit in 16 MiB."""
    one = b'{"type":"call.completed","payload":{}}'
    count = (MAX_BATCH - 64) // (len(one) + 1)
    return b'{"events":[' + b",".join([one] * count) + b"]}"


def full_events_batch() -> bytes:
    """1,000 events whose payloads are about 16 KiB of small objects each."""
    rows = [{"a": i} for i in range(1500)]
    payload = json.dumps({"rows": rows}, separators=(",", ":"))
    event = f'{{"type":"call.completed","payload":{payload}}}'.encode()
    body = b'{"events":[' + b",".join([event] * 1000) + b"]}"
    assert len(body) <= MAX_BATCH, len(body)
    return body


async def four_at_once(d: Daemon, body: bytes) -> list[int]:
    answers = await asyncio.gather(*(d.post("/v1/events/batch", data=body) for _ in range(4)))
    return [a.status for a in answers]


async def test_four_maximum_batches_stay_within_300_mib(make_daemon: Any) -> None:
    d: Daemon = await make_daemon()
    assert d.proc is not None
    pid = d.proc.pid
    warm = await d.post("/v1/events/batch", {"events": [{"type": "call.completed", "payload": {}}]})
    assert warm.status == 202, warm
    before = memory(pid)

    small = small_events_batch()
    assert len(small) > MAX_BATCH - 100
    statuses = await four_at_once(d, small)
    assert statuses == [422] * 4, statuses
    after_small = memory(pid)

    full = full_events_batch()
    statuses = await four_at_once(d, full)
    assert statuses == [202] * 4, statuses
    after_full = memory(pid)

    grown_small = after_small["VmHWM"] - before["VmRSS"]
    grown_full = after_full["VmHWM"] - before["VmRSS"]
    mib = 1024 * 1024
    print(
        f"RSS before {before['VmRSS'] // mib} MiB; peak after four 16 MiB batches of small "
        f"events +{grown_small // mib} MiB, after four of 1,000 full events "
        f"+{grown_full // mib} MiB"
    )
    assert grown_small < BUDGET, f"small events: +{grown_small // mib} MiB"
    assert grown_full < BUDGET, f"full events: +{grown_full // mib} MiB"


async def test_a_large_batch_is_checked_as_a_small_one_is(make_daemon: Any) -> None:
    """Over 1 MiB a batch is parsed event by event: the same answers, the same events."""
    d: Daemon = await make_daemon()
    pad = "x" * 2000
    events = [{"type": "call.completed", "payload": {"i": i, "pad": pad}} for i in range(600)]
    events[7]["payload"] = {"s": "é\U0001f600", "n": int("9" * 30), "pad": pad}
    events[8]["payload"] = {"big": "HUGE-INT"}

    def body(evs: list[Any], extra: str = "") -> bytes:
        text = json.dumps({"events": evs}, ensure_ascii=False, indent=1)
        text = text.replace('"HUGE-INT"', "9" * 5000).replace('"SURROGATE"', '"\\ud800"')
        return (text[:-1] + extra + "}").encode()

    assert len(body(events)) > 1 << 20
    ok = await d.post("/v1/events/batch", data=body(events))
    assert ok.status == 202, ok
    got = await d.get(f"/v1/events/{ok.json['data'][7]['id']}")
    assert got.json["payload"] == {"s": "é\U0001f600", "n": int("9" * 30), "pad": pad}
    got = await d.get(f"/v1/events/{ok.json['data'][8]['id']}")
    assert b'"payload":{"big":' + b"9" * 5000 + b"}" in got.body

    bad = [*events[:3], {"type": "no.such", "payload": {}}, *events[4:]]
    bad[9] = {"type": "call.completed", "payload": {"a": ["SURROGATE"]}}
    r = await d.post("/v1/events/batch", data=body(bad, ', "x": 1'))
    assert r.status == 422, r
    locs = [p["loc"] for p in r.json["detail"]]
    expected = [["body", "events", 3, "type"], ["body", "events", 9, "payload", "a", 0]]
    assert locs == [*expected, ["body", "x"]], locs

    huge = [*events[:5], {"type": "call.completed", "payload": {"s": "y" * 400_000}}, *events]
    r = await d.post("/v1/events/batch", data=body(huge))
    assert r.status == 413 and r.json["message"].startswith("events.5 is longer"), r

    broken = body(events)[:-40] + b"]}"
    r = await d.post("/v1/events/batch", data=broken)
    assert r.status == 400 and r.json["error"] == "bad_request", r

    not_object = json.dumps([{"events": events}]).encode()
    r = await d.post("/v1/events/batch", data=not_object)
    assert r.status == 422 and r.json["detail"][0]["loc"] == ["body"], r
    listed = await d.get("/v1/events?limit=250")
    assert len(listed.json["data"]) == 250  # only the first batch was stored
    assert "Traceback" not in d.log_text()


# --- the member-by-member walk against the whole parse, on generated documents ----------

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.just("LONE-SURROGATE")  # becomes "\\ud800", which orjson refuses
)
json_values = st.recursive(
    json_leaves,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
    max_leaves=10,
)
documents = st.dictionaries(
    st.sampled_from(["events", "x", "é", "events2"]),
    st.lists(json_values, max_size=5) | json_values,
    max_size=3,
)


def members_of(doc: dict[str, Any]) -> list[tuple[str, int | None, Any]]:
    out: list[tuple[str, int | None, Any]] = []
    for key, value in doc.items():
        if key == "events" and isinstance(value, list):
            out += [(key, i, v) for i, v in enumerate(value)]
        else:
            out.append((key, None, value))
    return out


@settings(max_examples=300, deadline=None)
@given(
    doc=documents,
    indent=st.sampled_from([None, 0, 2]),
    ascii=st.booleans(),
    window=st.sampled_from([1, 7, 16384]),
    cut=st.floats(0, 1),
)
def test_iter_members_agrees_with_the_whole_parse(
    doc: dict[str, Any], indent: int | None, ascii: bool, window: int, cut: float
) -> None:
    text = json.dumps(doc, indent=indent, ensure_ascii=ascii)
    text = text.replace('"LONE-SURROGATE"', '"\\ud800"').encode()
    first = jsonio._FIRST_WINDOW
    jsonio._FIRST_WINDOW = window  # small windows: the growing path on every value
    try:
        got = list(jsonio.iter_members(bytearray(text), "events", 1 << 20))
        assert repr(got) == repr(members_of(jsonio.loads(text)))
        short = text[: int(len(text) * cut)]
        if short.strip() and short != text:
            with pytest.raises(jsonio.JSONError):
                list(jsonio.iter_members(bytearray(short), "events", 1 << 20))
    finally:
        jsonio._FIRST_WINDOW = first
