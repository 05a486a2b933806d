"""Prefixed, time-ordered identifiers: `evt_`, `ep_`, `dlv_` + 26 Crockford base32 chars.

The first 10 characters are the millisecond timestamp and the rest is random, so IDs sort
by creation time (like ULIDs). Within one millisecond the random part is incremented,
keeping IDs made by this process strictly increasing.
"""

from __future__ import annotations

import os
import re
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80
_lock = threading.Lock()
_last_ms = -1
_last_rand = 0

ID_RE = re.compile(r"^[a-z]{2,4}_[0-9A-HJKMNP-TV-Z]{26}$")


# Two digits per lookup: 10 bits at a time.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]


def _encode(value: int, length: int) -> str:
    """`value` as `length` Crockford base32 digits, most significant first (length even)."""
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in range(5 * length - 10, -1, -10)])


def new_id(prefix: str) -> str:
    global _last_ms, _last_rand
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _last_rand = (_last_rand + 1) % (1 << _RANDOM_BITS)
        else:
            _last_ms = ms
            _last_rand = int.from_bytes(os.urandom(10), "big") >> 1  # room to increment
        rand = _last_rand
    return f"{prefix}_{_encode((ms << _RANDOM_BITS) | rand, 26)}"


def looks_like(prefix: str, value: str) -> bool:
    """True when `value` has the shape of an ID with this prefix."""
    return value.startswith(prefix + "_") and ID_RE.fullmatch(value) is not None
