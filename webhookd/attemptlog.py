"""The info-level log line of each failed attempt (event `attempt_failed`), at most a few a
minute per endpoint.

An operator reading the log should see that an endpoint is failing, how (the status code
or the error kind) and when the next attempt is due, without a dead endpoint that fails
thousands of times a minute drowning everything else. So each endpoint gets
LINES_PER_WINDOW lines per WINDOW_S; the failures past that are counted, and once the
window is over one line (event `attempt_failed_suppressed`) says how many were left out.

Only ids, numbers and error kinds are logged: never the URL (its query string may hold a
token), the error message (it may quote the host or the answer), headers or payloads.

Windows are opened in time order, so the oldest is always first in a queue: each call
closes the windows that are over (their summary lines, if any) in amortised constant
time, and an endpoint that stopped failing is forgotten with its window.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from webhookd.store.interface import Outcome
from webhookd.timefmt import to_rfc3339

LINES_PER_WINDOW = 5
WINDOW_S = 60.0
GAVE_UP = "gave up"


@dataclass
class _Window:
    endpoint_id: str
    start_s: float
    logged: int = 0
    suppressed: int = 0


class AttemptLog:
    """Rate-limited `attempt_failed` lines to `logger`; `clock` (monotonic seconds) is
    injectable so that a test need not wait a minute."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        clock: Callable[[], float] = time.monotonic,
        lines_per_window: int = LINES_PER_WINDOW,
        window_s: float = WINDOW_S,
    ) -> None:
        self.logger = logger
        self.clock = clock
        self.lines_per_window = lines_per_window
        self.window_s = window_s
        self._open: dict[str, _Window] = {}
        self._by_age: deque[_Window] = deque()

    def outcome(self, o: Outcome) -> None:
        """Every recorded outcome: a failed one is logged, or counted if its endpoint has
        had its lines for this window."""
        now = self.clock()
        self._close_before(now - self.window_s)
        if o.success:
            return
        w = self._open.get(o.endpoint_id)
        if w is None:
            w = self._open[o.endpoint_id] = _Window(o.endpoint_id, now)
            self._by_age.append(w)
        if w.logged >= self.lines_per_window:
            w.suppressed += 1
            return
        w.logged += 1
        self._line(o)

    def flush(self) -> None:
        """Say what every open window left out (at shutdown)."""
        self._close_before(float("inf"))

    def _close_before(self, start_s: float) -> None:
        queue = self._by_age
        while queue and queue[0].start_s <= start_s:
            w = queue.popleft()
            del self._open[w.endpoint_id]
            if w.suppressed:
                self.logger.info(
                    "more attempts to this endpoint failed than were logged",
                    extra={
                        "event": "attempt_failed_suppressed",
                        "endpoint_id": w.endpoint_id,
                        "suppressed": w.suppressed,
                        "window_s": self.window_s,
                    },
                )

    def _line(self, o: Outcome) -> None:
        a = o.attempt
        extra: dict[str, object] = {
            "event": "attempt_failed",
            "endpoint_id": o.endpoint_id,
            "delivery_id": o.delivery_id,
            "attempt": a.number,
        }
        if a.status_code is not None:
            extra["status_code"] = a.status_code
        else:
            extra["error_kind"] = a.error_kind
        pending = o.status == "pending" and o.next_attempt_at is not None
        extra["next_attempt"] = to_rfc3339(o.next_attempt_at) if pending else GAVE_UP
        self.logger.info("attempt failed", extra=extra)
