"""Time as the store keeps it (integer Unix milliseconds) and as the API shows it (RFC 3339),
and the clock every "now" of the store, the API and the dispatcher is read from.

The clock can be replaced (`use_clock`) so that a test moves time forward instead of
waiting for it: retention windows, secret grace periods, failure windows.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime


def system_ms() -> int:
    return time.time_ns() // 1_000_000


_clock: Callable[[], int] = system_ms


def now_ms() -> int:
    """Unix milliseconds by the current clock (the system's unless a test set one)."""
    return _clock()


@contextlib.contextmanager
def use_clock(clock: Callable[[], int]) -> Iterator[None]:
    """Within the block, `now_ms()` is `clock()` everywhere in this process."""
    global _clock
    previous, _clock = _clock, clock
    try:
        yield
    finally:
        _clock = previous


def to_rfc3339(ms: int | None) -> str | None:
    if ms is None:
        return None
    return f"{_second(ms // 1000)}.{ms % 1000:03d}Z"


@functools.lru_cache(maxsize=1024)
def _second(s: int) -> str:
    """'YYYY-MM-DDTHH:MM:SS' of a Unix second (most calls ask for the last few seconds)."""
    dt = datetime.fromtimestamp(s, tz=UTC)
    # Formatted by hand: strftime's %Y does not zero-pad years before 1000 on every platform.
    return (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
    )


def parse_rfc3339(text: str) -> int:
    """RFC 3339 (or ISO 8601 with an offset) to Unix ms; ValueError if it is not one.

    A bare date-time without an offset is refused: the contract's times are UTC and an
    unzoned time is ambiguous.
    """
    if not isinstance(text, str) or len(text) > 64:
        raise ValueError("expected an RFC 3339 timestamp such as 2026-01-31T12:00:00Z")
    candidate = text.strip()
    if candidate[-1:] in ("z", "Z"):
        candidate = candidate[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(candidate)
    except ValueError:
        raise ValueError("expected an RFC 3339 timestamp such as 2026-01-31T12:00:00Z") from None
    if dt.tzinfo is None:
        raise ValueError("expected a timestamp with a time zone, e.g. 2026-01-31T12:00:00Z")
    try:
        return int(dt.timestamp() * 1000)
    except (OverflowError, OSError, ValueError):
        raise ValueError("timestamp out of range") from None
