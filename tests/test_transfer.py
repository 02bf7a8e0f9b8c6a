"""The pure bounds on waiting for an origin: the fetch deadline, the minimum rate, idle reuse."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.transfer import MIN_IDLE, TransferDeadline, idle_limit, keep_alive_timeout


def test_no_bounds_means_no_wait_limit() -> None:
    assert TransferDeadline(None).next_wait()[0] == math.inf


def test_the_fetch_deadline_counts_only_time_spent_waiting() -> None:
    deadline = TransferDeadline(10.0)
    deadline.spent(4.0, 100)
    assert deadline.next_wait() == (6.0, "fetch_timeout")
    deadline.spent(6.5, 100)
    assert deadline.next_wait()[0] < 0


def test_the_minimum_rate_applies_after_the_grace_and_grows_with_bytes_received() -> None:
    deadline = TransferDeadline(None, min_rate=1000, grace=5)
    assert deadline.next_wait() == (5.0, "below min_transfer_rate")
    deadline.spent(1.0, 3000)  # 3000 bytes earn 3 more seconds
    assert deadline.next_wait()[0] == pytest.approx(7.0)


def test_a_one_byte_a_second_drip_is_cut_soon_after_the_grace() -> None:
    deadline = TransferDeadline(60.0, min_rate=1024, grace=5)
    seconds = 0
    while deadline.next_wait()[0] > 1:  # each byte takes a second
        deadline.spent(1.0, 1)
        seconds += 1
    assert seconds <= 5


@given(
    st.floats(min_value=0.1, max_value=100),
    st.floats(min_value=1, max_value=1e6),
    st.lists(st.tuples(st.floats(0, 5), st.integers(0, 10_000)), max_size=30),
)
def test_the_allowed_wait_never_exceeds_either_bound(
    total: float, rate: float, reads: list[tuple[float, int]]
) -> None:
    deadline = TransferDeadline(total, min_rate=rate, grace=2)
    for seconds, size in reads:
        deadline.spent(seconds, size)
    wait, _ = deadline.next_wait()
    assert wait <= total - deadline.waited + 1e-9
    assert wait <= 2 + deadline.received / rate - deadline.waited + 1e-9


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("timeout=5", 5.0),
        ("timeout=5, max=1000", 5.0),
        ("max=100, Timeout = 30", 30.0),
        ("max=5", None),
        ("timeout=", None),
        ("timeout=abc", None),
        ("xtimeout=5", None),
        (None, None),
        ("", None),
    ],
)
def test_keep_alive_timeout_is_read_leniently(value: str | None, seconds: float | None) -> None:
    assert keep_alive_timeout(value) == seconds


def test_idle_reuse_stays_under_what_the_origin_announces() -> None:
    assert idle_limit(4.0, None) == 4.0
    assert idle_limit(4.0, 5.0) == 4.0  # Node's default: the configured 4 s is below it
    assert idle_limit(4.0, 2.0) == 1.0
    assert idle_limit(4.0, 0.0) == MIN_IDLE
