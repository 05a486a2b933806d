"""When to try again: the retry schedule, jitter and Retry-After. Pure functions."""

from __future__ import annotations

import email.utils
import random
from collections.abc import Sequence
from datetime import UTC


def next_delay_s(
    schedule_s: Sequence[float],
    failures_so_far: int,
    jitter: float,
    retry_after_s: float | None = None,
    rand: random.Random | None = None,
) -> float | None:
    """Delay before the next scheduled attempt after `failures_so_far` scheduled failures
    (1 after the first attempt failed), or None when the schedule is exhausted.

    Jitter spreads retries by +-`jitter` of the delay so that an endpoint coming back is not
    hit by every delivery at once. Retry-After can only lengthen a delay, and never beyond
    the longest delay of the schedule, so a hostile answer cannot park a delivery forever.
    """
    index = failures_so_far - 1
    if index < 0 or index >= len(schedule_s):
        return None
    delay = schedule_s[index]
    if jitter > 0 and delay > 0:
        r = rand or random
        delay *= 1 + r.uniform(-jitter, jitter)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, max(schedule_s)))
    return max(delay, 0.0)


def parse_retry_after(value: str | None, now_s: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(min(int(text), 10**9))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # "-0000" parses as naive; HTTP dates are always UTC
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - now_s, 0.0)
