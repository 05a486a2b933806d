"""When to try again: the retry schedule, jitter and Retry-After. Pure functions."""

from __future__ import annotations

import email.utils
import random
from collections.abc import Sequence
from datetime import UTC

# Retry-After is capped at the schedule's longest delay anyway (next_delay_s); this bound
# only keeps the arithmetic finite.
MAX_RETRY_AFTER_S = 1e9
# Ten digits already exceed MAX_RETRY_AFTER_S.
MAX_DELTA_DIGITS = 10
# An HTTP date is 29 characters (IMF-fixdate), at most about 40 in the obsolete forms;
# anything much longer is not a date.
MAX_DATE_CHARS = 64


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
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), or None when
    it cannot be read. Never raises: the header is the receiver's to write, and an answer
    that crashed the decision would strand its delivery (see the dispatcher)."""
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        # More significant digits than MAX_DELTA_DIGITS is a huge delay, not a number to
        # convert: int() refuses more than 4,300 digits, and costs time well below that.
        digits = text.lstrip("0") or "0"
        if len(digits) > MAX_DELTA_DIGITS:
            return MAX_RETRY_AFTER_S
        return float(min(int(digits), MAX_RETRY_AFTER_S))
    if len(text) > MAX_DATE_CHARS:
        return None
    try:
        when = email.utils.parsedate_to_datetime(text)
        if when.tzinfo is None:  # "-0000" parses as naive; HTTP dates are always UTC
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now_s
    # The standard library's date parser answers out-of-range fields (a year of twenty
    # digits, a zone offset past a day) with any of these.
    except (TypeError, ValueError, IndexError, OverflowError, AttributeError):
        return None
    if seconds != seconds:  # NaN cannot come from a date, but a wrong answer must not pass
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
