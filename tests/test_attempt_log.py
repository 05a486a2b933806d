"""The `attempt_failed` log lines: one per failed attempt, at most a few a minute per
endpoint, then one line saying how many were left out; on an injected clock, so a minute
passes at once. End to end, a real daemon logs them for a failing receiver and says at
shutdown what it left out, without the URL, secret or payload."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from tests.conftest import Daemon, Receiver
from webhookd.attemptlog import GAVE_UP, AttemptLog
from webhookd.store.interface import Attempt, Outcome

T0_MS = 1_800_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def outcome(
    endpoint_id: str = "ep_a",
    n: int = 1,
    *,
    status_code: int | None = 500,
    error_kind: str | None = None,
    status: str = "pending",
    success: bool = False,
) -> Outcome:
    attempt = Attempt(
        number=n,
        started_at=T0_MS,
        duration_ms=3,
        trigger="scheduled",
        format="json",
        request_headers={"webhook-signature": "v1,secret-ish"},
        status_code=status_code,
        response_headers={},
        response_body="the answer",
        error_kind=error_kind,
        error_message="refused to connect to 10.0.0.1 for host 'h'",
    )
    next_at = T0_MS + 5000 if status == "pending" else None
    return Outcome(f"dlv_{n}", endpoint_id, attempt, status, next_at, n, 0, success)


def lines(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]


@pytest.fixture
def attempt_log(caplog: pytest.LogCaptureFixture) -> tuple[AttemptLog, Clock]:
    caplog.set_level(logging.INFO, logger="test.attempts")
    clock = Clock()
    return AttemptLog(logging.getLogger("test.attempts"), clock=clock), clock


def test_each_failed_attempt_is_one_line_with_what_happened_and_what_next(
    attempt_log: tuple[AttemptLog, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    log, _ = attempt_log
    log.outcome(outcome(n=1, status_code=503))
    log.outcome(outcome(n=2, status_code=None, error_kind="connection_refused"))
    log.outcome(outcome(n=3, status_code=410, status="skipped"))
    log.outcome(outcome(n=4, status_code=500, status="failed"))
    log.outcome(outcome(n=5, status_code=200, status="delivered", success=True))
    got = lines(caplog, "attempt_failed")
    assert [r.levelno for r in got] == [logging.INFO] * 4
    first, second, third, fourth = (r.__dict__ for r in got)
    assert first["endpoint_id"] == "ep_a" and first["delivery_id"] == "dlv_1"
    assert first["status_code"] == 503 and "error_kind" not in first
    assert first["next_attempt"] == "2027-01-15T08:00:05.000Z"
    assert second["error_kind"] == "connection_refused" and "status_code" not in second
    assert third["next_attempt"] == GAVE_UP and fourth["next_attempt"] == GAVE_UP
    text = caplog.text
    for leak in ("secret-ish", "the answer", "10.0.0.1"):
        assert leak not in text


def test_a_few_lines_a_minute_per_endpoint_then_how_many_were_left_out(
    attempt_log: tuple[AttemptLog, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    log, clock = attempt_log
    for n in range(1, 21):
        log.outcome(outcome("ep_a", n))
        clock.now_s += 1
    log.outcome(outcome("ep_b", 1))  # another endpoint has lines of its own
    assert len([r for r in lines(caplog, "attempt_failed") if r.endpoint_id == "ep_a"]) == 5
    assert len([r for r in lines(caplog, "attempt_failed") if r.endpoint_id == "ep_b"]) == 1
    assert lines(caplog, "attempt_failed_suppressed") == []

    # The minute is over: the next outcome (of any endpoint, a success too) closes it.
    clock.now_s += 40
    log.outcome(outcome("ep_b", 2, status_code=200, status="delivered", success=True))
    [summary] = lines(caplog, "attempt_failed_suppressed")
    assert summary.endpoint_id == "ep_a" and summary.suppressed == 15
    # A new minute, new lines.
    log.outcome(outcome("ep_a", 21))
    assert len([r for r in lines(caplog, "attempt_failed") if r.endpoint_id == "ep_a"]) == 6


def test_flush_says_what_open_windows_left_out_and_quiet_endpoints_are_forgotten(
    attempt_log: tuple[AttemptLog, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    log, _ = attempt_log
    for n in range(1, 8):
        log.outcome(outcome("ep_a", n))
    log.outcome(outcome("ep_b", 1))
    log.flush()
    [summary] = lines(caplog, "attempt_failed_suppressed")
    assert (summary.endpoint_id, summary.suppressed) == ("ep_a", 2)
    assert log._open == {} and not log._by_age  # nothing kept for quiet endpoints
    log.flush()
    assert len(lines(caplog, "attempt_failed_suppressed")) == 1


async def test_a_daemon_logs_failed_attempts_and_at_shutdown_what_it_left_out(
    make_daemon: Any, receiver: Receiver
) -> None:
    d: Daemon = await make_daemon(
        {
            "log": {"format": "json"},
            "delivery": {"retry_schedule_s": [0.01] * 7},
        }
    )
    receiver.default = 500
    ep = await d.endpoint(receiver.url + "?token=t0ps3cret")
    published = await d.publish(payload={"card": "4242-payload"})
    [delivery] = (await d.get(f"/v1/deliveries?event_id={published['id']}")).json["data"]
    await d.wait_status(delivery["id"], "failed")
    assert len(receiver.received) == 8
    assert await d.stop() == 0

    records = [json.loads(line) for line in d.log_text().splitlines() if line.startswith("{")]
    failed = [r for r in records if r["event"] == "attempt_failed"]
    assert len(failed) == 5
    assert all(r["level"] == "info" and r["endpoint_id"] == ep["id"] for r in failed)
    assert [r["attempt"] for r in failed] == [1, 2, 3, 4, 5]
    assert {r["status_code"] for r in failed} == {500}
    assert all(r["delivery_id"] == delivery["id"] and r["next_attempt"] for r in failed)
    [summary] = [r for r in records if r["event"] == "attempt_failed_suppressed"]
    assert summary["endpoint_id"] == ep["id"] and summary["suppressed"] == 3
    text = d.log_text()
    for leak in ("t0ps3cret", "4242-payload", ep["secret"]):
        assert leak not in text
