"""Running as a service: the notify protocol, reload, health checks and retention, with a
real daemon process, real signals and a real unix datagram socket."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import Daemon, Receiver, wait_until

KEY_A = "A" * 40
KEY_B = "B" * 40


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    async def expect(self, needle: str, timeout: float = 15) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for i, msg in enumerate(self.messages):
                if needle in msg.split("\n"):
                    del self.messages[: i + 1]
                    return msg
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no {needle!r} in notify messages: {self.messages}")
            try:
                data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), remaining)
            except TimeoutError:
                continue
            self.messages.append(data.decode())

    def close(self) -> None:
        self.sock.close()


async def test_notify_protocol_ready_watchdog_reload_stopping(
    make_daemon: Any, tmp_path: Path
) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        d: Daemon = await make_daemon(
            env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000"}
        )
        ready = await notify.expect("READY=1")
        assert "STATUS=" in ready
        await notify.expect("WATCHDOG=1")
        await notify.expect("WATCHDOG=1")  # keeps pinging
        d.signal(signal.SIGHUP)
        reloading = await notify.expect("RELOADING=1")
        assert any(line.startswith("MONOTONIC_USEC=") for line in reloading.split("\n"))
        await notify.expect("READY=1")
        d.signal(signal.SIGTERM)
        await notify.expect("STOPPING=1")
        assert await d.wait_exit() == 0
    finally:
        notify.close()


async def test_reload_applies_live_settings(make_daemon: Any, receiver: Receiver) -> None:
    d: Daemon = await make_daemon(
        {
            "api_keys": [{"name": "a", "key": KEY_A}],
            "log": {"level": "info"},
            "security": {"https_only": True},
        }
    )
    d.api_key = KEY_A
    assert (await d.get("/v1/endpoints", key=KEY_B)).status == 401
    assert (await d.post("/v1/endpoints", {"url": receiver.url})).status == 422  # http
    assert (await d.post("/v1/events", {"type": "new.type", "payload": {}})).status == 422
    d.config = {
        **d.config,
        "api_keys": [{"name": "a", "key": KEY_A}, {"name": "b", "key": KEY_B}],
        "log": {"level": "debug"},
        "security": {"https_only": False, "allow_networks": ["127.0.0.0/8"]},
        "event_types": [*d.config["event_types"], {"name": "new.type"}],
        "delivery": {**d.config["delivery"], "retry_schedule_s": [0.1]},
    }
    d.write_config()
    d.signal(signal.SIGHUP)
    await wait_until(lambda: "event=reloaded" in d.log_text(True), 10, "the reload")
    assert "needs_restart=none" in d.log_text(True)
    assert (await d.get("/v1/endpoints", key=KEY_B)).status == 200
    ep = await d.endpoint(receiver.url)
    receiver.statuses = [500]
    ev = await d.publish("new.type")
    await receiver.wait_for(2, timeout=10)  # retried on the new 0.1 s schedule
    assert receiver.event_ids() == [ev["id"], ev["id"]]
    assert ep["id"]
    # Debug level now applies: per-attempt lines appear.
    await wait_until(lambda: "event=attempt " in d.log_text(True), 10, "a debug attempt line")


async def test_bad_reload_keeps_the_old_config(make_daemon: Any, receiver: Receiver) -> None:
    d: Daemon = await make_daemon()
    good = d.config_path.read_text()
    d.config_path.write_text("delivery:\n  timeout_s: banana\n")
    d.signal(signal.SIGHUP)
    await wait_until(lambda: "reload_rejected" in d.log_text(True), 10, "the rejected reload")
    assert "delivery.timeout_s" in d.log_text(True)
    assert d.proc is not None and d.proc.poll() is None
    await d.endpoint(receiver.url)
    await d.publish()
    await receiver.wait_for(1)
    # A setting that needs a restart is reported, not applied.
    cfg = yaml.safe_load(good)
    cfg["listen"] = "127.0.0.1:1"
    d.config_path.write_text(yaml.safe_dump(cfg))
    d.signal(signal.SIGHUP)
    await wait_until(lambda: "reload_needs_restart" in d.log_text(True), 10, "restart note")
    assert "keys=listen" in d.log_text(True)
    assert (await d.get("/readyz")).status == 200


async def _healthcheck(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "webhookd",
        "healthcheck",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_healthcheck_command(make_daemon: Any) -> None:
    d: Daemon = await make_daemon()
    code, out = await _healthcheck("--url", d.base)
    assert (code, out) == (0, "ready\n")
    await d.stop()
    code, out = await _healthcheck("--url", d.base)
    assert code == 1
    assert "cannot reach" in out


async def test_healthcheck_finds_the_daemon_from_its_config(
    make_daemon: Any, tmp_path: Path
) -> None:
    sock = tmp_path / "api.sock"
    d: Daemon = await make_daemon({"listen": f"unix:{sock}"}, start=False)
    d.write_config()
    proc_cfg = str(d.config_path)
    code, _ = await _healthcheck("-c", proc_cfg)
    assert code == 1  # not running yet
    import subprocess

    d.proc = subprocess.Popen(
        [sys.executable, "-m", "webhookd", "serve", "-c", proc_cfg],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    async def ready() -> bool:
        return (await _healthcheck("-c", proc_cfg))[0] == 0

    await wait_until(ready, 20, "the unix-socket daemon to be ready")
    await d.stop()
    assert not sock.exists()


async def test_retention_purges_old_finished_events_only(
    make_daemon: Any, make_receiver: Any
) -> None:
    ok = await make_receiver()
    slow = await make_receiver(default=500)
    d: Daemon = await make_daemon(
        {"retention": {"days": 1.5 / 86400}, "delivery": {"retry_schedule_s": [3600]}}
    )
    await d.endpoint(ok.url, events=["call.completed"])
    await d.endpoint(slow.url, events=["invoice.paid"])
    done = await d.publish("call.completed")
    waiting = await d.publish("invoice.paid")  # fails once, then waits an hour: pending
    await ok.wait_for(1)
    await slow.wait_for(1)

    async def purged() -> bool:
        return (await d.get(f"/v1/events/{done['id']}")).status == 404

    await wait_until(purged, 20, "the delivered event to be purged")
    r = await d.get(f"/v1/events/{waiting['id']}")
    assert r.status == 200
    assert r.json["deliveries"][0]["status"] == "pending"
    r = await d.get(f"/v1/deliveries?event_id={done['id']}")
    assert r.json["data"] == []
    assert "retention_purged" in d.log_text(True)


def _metric(text: str, name: str) -> float:
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head, _, value = line.rpartition(" ")
            if head == name or head.startswith(name + "{"):
                total += float(value)
                found = True
    assert found, f"{name} not in metrics"
    return total


async def test_metrics(make_daemon: Any, make_receiver: Any) -> None:
    ok = await make_receiver()
    bad = await make_receiver(default=503)
    d: Daemon = await make_daemon({"delivery": {"retry_schedule_s": [3600]}})
    await d.endpoint(ok.url, events=["call.completed"])
    await d.endpoint(bad.url, events=["invoice.paid"])
    for _ in range(3):
        await d.publish("call.completed")
    await d.publish("invoice.paid")
    await ok.wait_for(3)
    await bad.wait_for(1)

    async def scraped() -> str | None:
        r = await d.get("/metrics", key="")
        text = r.body.decode()
        if _metric(text, "webhookd_attempts_total") >= 4:
            return text
        return None

    text = await wait_until(scraped, 10, "four attempts in the metrics")
    assert _metric(text, "webhookd_events_published_total") == 4
    assert 'webhookd_attempts_total{outcome="success",status_class="2xx"} 3.0' in text
    assert 'webhookd_attempts_total{outcome="http_error",status_class="5xx"} 1.0' in text
    assert 'webhookd_deliveries_finished_total{status="delivered"} 3.0' in text
    assert _metric(text, "webhookd_attempt_duration_seconds_count") == 4
    assert _metric(text, "webhookd_delivery_latency_seconds_count") == 3
    # Buckets are cumulative: every attempt here took well under 30 s.
    assert 'webhookd_attempt_duration_seconds_bucket{le="30.0"} 4.0' in text
    assert 'webhookd_attempt_duration_seconds_bucket{le="+Inf"} 4.0' in text
    assert 'webhookd_delivery_latency_seconds_bucket{le="86400.0"} 3.0' in text
    assert 0 <= _metric(text, "webhookd_attempt_duration_seconds_sum") < 30
    assert "# TYPE webhookd_attempt_duration_seconds histogram" in text
    assert "# TYPE webhookd_attempts_total counter" in text
    assert _metric(text, "webhookd_pending_deliveries") == 1  # the 503 waits an hour
    assert _metric(text, "webhookd_oldest_due_delivery_age_seconds") == 0
    assert _metric(text, "webhookd_endpoints") == 2
    assert _metric(text, "webhookd_endpoints_disabled") == 0
    assert "webhookd_in_flight_requests" in text
    # Four publishes, four outcomes and their claims took at least a few transactions,
    # each of which spent some time committing.
    transactions = _metric(text, "webhookd_store_transactions_total")
    assert transactions >= 3
    busy = _metric(text, "webhookd_store_transaction_seconds_total")
    committing = _metric(text, "webhookd_store_commit_seconds_sum")
    assert 0 < committing <= busy < 30
    # Every commit is counted in the duration histogram, once per transaction.
    assert _metric(text, "webhookd_store_commit_seconds_count") == transactions
    assert 'webhookd_store_commit_seconds_bucket{le="+Inf"} ' + f"{transactions}" in text
    assert "# TYPE webhookd_store_commit_seconds histogram" in text


async def test_metrics_auth_is_configurable(make_daemon: Any) -> None:
    key = "m" * 40
    d: Daemon = await make_daemon({"api_keys": [{"name": "k", "key": key}]})
    assert (await d.get("/metrics", key="")).status == 200
    await d.stop()
    d.config["metrics"] = {"require_auth": True}
    await d.start()
    assert (await d.get("/metrics", key="")).status == 401
    assert (await d.get("/metrics", key=key)).status == 200


async def test_readyz_and_publish_answer_503_while_storage_cannot_write(
    make_daemon: Any,
) -> None:
    import sqlite3

    d: Daemon = await make_daemon()
    assert (await d.get("/readyz")).status == 200
    # Another process holds the write lock longer than the daemon's busy timeout.
    blocker = sqlite3.connect(d.config["database"], isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        r = await d.get("/readyz")
        assert r.status == 503, r
        assert "storage cannot write" in r.json["problems"]
        code, out = await _healthcheck("--url", d.base)
        assert code == 1 and out.startswith("webhookd: not ready: storage cannot write"), out
        r = await d.post("/v1/events", {"type": "call.completed", "payload": {}})
        assert r.status == 503, r
        assert r.json["error"] == "unavailable"
        assert r.headers.get("Retry-After")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert (await d.get("/readyz")).status == 200
    assert (await d.post("/v1/events", {"type": "call.completed", "payload": {}})).status == 202
