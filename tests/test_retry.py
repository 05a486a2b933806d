"""The retry schedule, jitter and Retry-After."""

from __future__ import annotations

import contextlib
import email.utils
import os
import random
import string
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webhookd.retry import MAX_RETRY_AFTER_S, next_delay_s, parse_retry_after

SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
NOW = 1_700_000_000.0


class Extreme(random.Random):
    """A generator whose `uniform` always answers one end of the range."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


# --- next_delay_s ----------------------------------------------------------------------


def test_without_jitter_the_schedule_is_followed_exactly() -> None:
    got = [next_delay_s(SCHEDULE, n, 0) for n in range(1, len(SCHEDULE) + 1)]
    assert got == list(SCHEDULE)


def test_fractional_delays_are_kept() -> None:
    assert next_delay_s([0.2, 0.4], 1, 0) == 0.2
    assert next_delay_s([0.2, 0.4], 2, 0) == 0.4


def test_the_schedule_ends_with_none() -> None:
    assert next_delay_s(SCHEDULE, len(SCHEDULE) + 1, 0) is None
    assert next_delay_s(SCHEDULE, 100, 0.2) is None
    assert next_delay_s([], 1, 0) is None


@pytest.mark.parametrize("failures", [0, -1, -100])
def test_no_delay_before_a_failure(failures: int) -> None:
    assert next_delay_s(SCHEDULE, failures, 0) is None
    assert next_delay_s(SCHEDULE, failures, 0.2, retry_after_s=60) is None


def test_jitter_stays_within_plus_minus_twenty_percent() -> None:
    rand = random.Random(1234)
    for n, base in enumerate(SCHEDULE, start=1):
        samples = [next_delay_s(SCHEDULE, n, 0.2, rand=rand) for _ in range(2000)]
        assert all(s is not None for s in samples)
        values = [s for s in samples if s is not None]
        assert min(values) >= base * 0.8
        assert max(values) <= base * 1.2
        # The spread is real: both halves of the window are used, not just the base.
        assert min(values) < base * 0.85
        assert max(values) > base * 1.15
        assert len(set(values)) > 1000


def test_jitter_reaches_both_ends_exactly() -> None:
    assert next_delay_s([100.0], 1, 0.2, rand=Extreme(high=True)) == pytest.approx(120.0)
    assert next_delay_s([100.0], 1, 0.2, rand=Extreme(high=False)) == pytest.approx(80.0)


def test_jitter_is_reproducible_with_a_seed() -> None:
    a = [next_delay_s(SCHEDULE, 3, 0.2, rand=random.Random(7)) for _ in range(5)]
    b = [next_delay_s(SCHEDULE, 3, 0.2, rand=random.Random(7)) for _ in range(5)]
    assert a == b


def test_zero_delay_stays_zero_with_jitter() -> None:
    assert next_delay_s([0.0, 10.0], 1, 0.5, rand=random.Random(1)) == 0.0


@given(
    schedule=st.lists(
        st.floats(min_value=0, max_value=7 * 86400, allow_nan=False), min_size=1, max_size=20
    ),
    data=st.data(),
    jitter=st.floats(min_value=0, max_value=1, allow_nan=False),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_jitter_bounds_hold_for_any_schedule(
    schedule: list[float], data: st.DataObject, jitter: float, seed: int
) -> None:
    failures = data.draw(st.integers(min_value=1, max_value=len(schedule)))
    base = schedule[failures - 1]
    got = next_delay_s(schedule, failures, jitter, rand=random.Random(seed))
    assert got is not None
    assert got >= 0
    assert base * (1 - jitter) - 1e-9 <= got <= base * (1 + jitter) + 1e-9


def test_retry_after_lengthens_the_delay() -> None:
    assert next_delay_s(SCHEDULE, 1, 0, retry_after_s=120) == 120
    assert next_delay_s(SCHEDULE, 2, 0.2, retry_after_s=3000, rand=random.Random(3)) == 3000


def test_retry_after_is_capped_at_the_longest_delay() -> None:
    assert next_delay_s(SCHEDULE, 1, 0, retry_after_s=10**9) == 36000
    assert next_delay_s(SCHEDULE, 1, 0.2, retry_after_s=86400, rand=random.Random(5)) == 36000
    assert next_delay_s([1.0, 50.0, 2.0], 1, 0, retry_after_s=1000) == 50.0


def test_a_shorter_retry_after_does_not_shorten_the_delay() -> None:
    assert next_delay_s(SCHEDULE, 3, 0, retry_after_s=10) == 1800
    assert next_delay_s(SCHEDULE, 3, 0, retry_after_s=0) == 1800
    high = next_delay_s([100.0], 1, 0.2, retry_after_s=110, rand=Extreme(high=True))
    assert high == pytest.approx(120.0)


def test_a_capped_retry_after_never_shortens_a_jittered_delay() -> None:
    without = next_delay_s([100.0], 1, 0.2, rand=Extreme(high=True))
    with_header = next_delay_s([100.0], 1, 0.2, retry_after_s=130, rand=Extreme(high=True))
    assert without == pytest.approx(120.0)
    assert with_header is not None
    assert with_header >= without


@given(
    schedule=st.lists(
        st.floats(min_value=0, max_value=100000, allow_nan=False), min_size=1, max_size=10
    ),
    data=st.data(),
    retry_after=st.floats(min_value=0, max_value=10**9, allow_nan=False),
)
def test_retry_after_without_jitter_is_max_of_delay_and_capped_header(
    schedule: list[float], data: st.DataObject, retry_after: float
) -> None:
    failures = data.draw(st.integers(min_value=1, max_value=len(schedule)))
    base = schedule[failures - 1]
    got = next_delay_s(schedule, failures, 0, retry_after_s=retry_after)
    assert got == max(base, min(retry_after, max(schedule)))


# --- parse_retry_after -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("1", 1.0), ("120", 120.0), (" 120 ", 120.0), ("86400", 86400.0)],
)
def test_delta_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == seconds


def test_huge_delta_seconds_are_bounded() -> None:
    got = parse_retry_after("9" * 40, NOW)
    assert got is not None
    assert got <= 10**9


def test_http_date_in_gmt() -> None:
    header = email.utils.formatdate(NOW + 120, usegmt=True)
    assert header.endswith("GMT")
    assert parse_retry_after(header, NOW) == pytest.approx(120.0)


def test_http_date_as_formatdate_writes_it(utc_local_time: None) -> None:
    # formatdate() writes the zone as -0000; see the time zone test below for other hosts.
    assert parse_retry_after(email.utils.formatdate(NOW + 3600), NOW) == pytest.approx(3600.0)


def test_http_date_with_an_offset() -> None:
    header = email.utils.formatdate(NOW + 60 + 2 * 3600, localtime=False).replace("-0000", "+0200")
    assert parse_retry_after(header, NOW) == pytest.approx(60.0)


def test_past_http_date_means_now() -> None:
    assert parse_retry_after(email.utils.formatdate(NOW - 3600, usegmt=True), NOW) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", NOW) == 0.0


@contextlib.contextmanager
def local_time_zone(tz: str) -> Iterator[None]:
    """Run with the process's local time zone set to `tz` (POSIX TZ syntax)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = tz
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.fixture
def utc_local_time() -> Iterator[None]:
    with local_time_zone("UTC0"):
        yield


@pytest.fixture
def non_utc_local_time() -> Iterator[None]:
    with local_time_zone("EST+5"):
        yield


@pytest.mark.usefixtures("non_utc_local_time")
def test_http_date_does_not_depend_on_the_host_time_zone() -> None:
    assert parse_retry_after(email.utils.formatdate(NOW + 120), NOW) == pytest.approx(120.0)


def test_gmt_http_date_does_not_depend_on_the_host_time_zone(non_utc_local_time: None) -> None:
    header = email.utils.formatdate(NOW + 120, usegmt=True)
    assert parse_retry_after(header, NOW) == pytest.approx(120.0)


@pytest.mark.parametrize(
    "value", ["soon", "abc", "-5", "1e3", "Wed, 99 Foo 2015 07:28:00 GMT", "GMT", ",", "   "]
)
def test_garbage_is_ignored(value: str) -> None:
    assert parse_retry_after(value, NOW) is None


@pytest.mark.parametrize("value", ["", None])
def test_empty_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


def test_non_ascii_digits_are_ignored() -> None:
    assert parse_retry_after("\u00b2", NOW) is None


@given(st.text(alphabet=string.printable, max_size=40))
def test_any_ascii_header_parses_or_is_ignored(value: str) -> None:
    got = parse_retry_after(value, NOW)
    assert got is None or got >= 0


@given(st.integers(min_value=0, max_value=10**6))
def test_any_delta_seconds_round_trips(seconds: int) -> None:
    assert parse_retry_after(str(seconds), NOW) == float(seconds)


# --- hostile Retry-After values: read as a bounded delay, or ignored, never an exception --


def test_thousands_of_digits_are_a_bounded_delay_not_an_error() -> None:
    # int() refuses more than 4,300 digits; this once crashed the dispatcher's decision.
    assert parse_retry_after("9" * 5000, NOW) == MAX_RETRY_AFTER_S
    assert parse_retry_after("1" + "0" * 100_000, NOW) == MAX_RETRY_AFTER_S


def test_leading_zeros_do_not_make_a_delay_huge() -> None:
    assert parse_retry_after("0" * 5000, NOW) == 0.0
    assert parse_retry_after("0" * 5000 + "30", NOW) == 30.0


@pytest.mark.parametrize(
    "value",
    [
        "Fri, 31 Dec 99999999999999999999 23:59:59 GMT",  # OverflowError in the parser
        "Fri, 99999999999999999999 Dec 2020 23:59:59 GMT",
        "Fri, 31 Dec 2020 99999999999999999999:59:59 GMT",
        "Fri, 31 Dec 2020 23:59:59 +99999999999999999999",
        "Fri, 31 Dec 2020 23:59:59 +9999",  # an offset of more than a day
        "Fri, 31 Dec " + "9" * 5000 + " 23:59:59 GMT",  # int() refuses the year
        "Fri, 31 Dec -5 23:59:59 GMT",
        "Fri, 31 Dec 2020 23:59:59 GMT" + " " * 10_000 + "x",
    ],
)
def test_dates_out_of_range_are_ignored(value: str) -> None:
    assert parse_retry_after(value, NOW) is None


def test_a_date_at_the_end_of_the_calendar_is_a_bounded_delay() -> None:
    got = parse_retry_after("Fri, 31 Dec 9999 23:59:59 -2359", NOW)
    assert got is not None
    assert 0 < got <= MAX_RETRY_AFTER_S


@pytest.mark.parametrize("value", ["-5", "-0", "+5", "5.5", "\u0665", "5\x00", "nan", "inf"])
def test_signed_fractional_and_odd_numbers_are_ignored(value: str) -> None:
    assert parse_retry_after(value, NOW) is None


@given(st.text(max_size=200))
def test_any_text_parses_or_is_ignored(value: str) -> None:
    got = parse_retry_after(value, NOW)
    assert got is None or 0 <= got <= MAX_RETRY_AFTER_S


@given(st.integers(min_value=0, max_value=10**4000))
def test_any_delta_seconds_is_bounded(seconds: int) -> None:
    expected = MAX_RETRY_AFTER_S if seconds > MAX_RETRY_AFTER_S else float(seconds)
    assert parse_retry_after(str(seconds), NOW) == expected
