"""The circuit breaker as plain state and a clock: when it opens, probes and closes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.breaker import Breaker


def test_an_origin_failing_everything_opens_the_circuit_after_the_threshold() -> None:
    breaker = Breaker(failures=3, reset=10, ratio=0.5, window=10)
    for t in (0.0, 0.1):
        breaker.failure(t)
        assert breaker.allow(t)
    breaker.failure(0.2)
    assert breaker.state == "open"
    assert not breaker.allow(0.3)
    assert breaker.retry_after(0.3) == 9.9


def test_failures_among_many_successes_do_not_open_the_circuit() -> None:
    breaker = Breaker(failures=3, reset=10, ratio=0.5, window=10)
    for i in range(100):
        breaker.success(i * 0.05)
        if i % 10 == 0:
            breaker.failure(i * 0.05)
    assert breaker.state == "closed"


def test_failures_older_than_the_window_are_forgotten() -> None:
    breaker = Breaker(failures=3, reset=10, ratio=0.5, window=10)
    breaker.failure(0.0)
    breaker.failure(1.0)
    breaker.failure(12.5)  # the first two fell out of the window
    breaker.failure(13.0)
    assert breaker.state == "closed"
    breaker.failure(13.5)
    assert breaker.state == "open"


def test_after_reset_one_probe_passes_and_its_outcome_decides() -> None:
    breaker = Breaker(failures=1, reset=5)
    breaker.failure(0.0)
    assert not breaker.allow(4.9)
    assert breaker.allow(5.0) and breaker.state == "half-open"
    assert not breaker.allow(5.1)  # only one probe at a time
    breaker.failure(6.0)
    assert breaker.state == "open" and not breaker.allow(10.9)
    assert breaker.allow(11.0)
    breaker.success(11.5)
    assert breaker.state == "closed" and breaker.allow(11.6)


def test_it_refuses_while_open_and_while_its_probe_is_out_not_once_a_probe_is_due() -> None:
    breaker = Breaker(failures=1, reset=5)
    assert not breaker.refusing(0.0)
    breaker.failure(0.0)
    assert breaker.refusing(4.9)
    assert not breaker.refusing(60.0) and breaker.state == "open"  # nobody asked: probe due
    assert breaker.allow(60.0) and breaker.refusing(60.1)  # the probe is out
    breaker.success(60.2)
    assert not breaker.refusing(60.3)


def test_a_probe_that_gets_no_answer_lets_the_next_request_probe() -> None:
    breaker = Breaker(failures=1, reset=5)
    breaker.failure(0.0)
    assert breaker.allow(5.0)
    breaker.release_probe()  # cancelled, or refused by a budget
    assert breaker.allow(5.1) and breaker.state == "half-open"


def test_answers_to_requests_sent_before_it_opened_do_not_close_it() -> None:
    breaker = Breaker(failures=1, reset=5)
    breaker.failure(0.0)
    breaker.success(0.5)
    assert breaker.state == "open"


@settings(max_examples=200, deadline=None)
@given(
    outcomes=st.lists(st.tuples(st.floats(0, 0.5), st.booleans()), max_size=60),
    failures=st.integers(1, 10),
    ratio=st.floats(0.05, 1.0),
)
def test_it_opens_only_when_enough_failures_are_enough_of_the_window(
    outcomes: list[tuple[float, bool]], failures: int, ratio: float
) -> None:
    breaker = Breaker(failures=failures, reset=1e9, ratio=ratio, window=1e9)
    now, ok, failed = 0.0, 0, 0
    for step, is_failure in outcomes:
        now += step
        was_closed = breaker.state == "closed"
        if is_failure:
            failed += 1
            breaker.failure(now)
        else:
            ok += 1
            breaker.success(now)
        if was_closed and breaker.state == "open":
            assert failed >= failures and failed >= ratio * (ok + failed)
            return
    assert not (failed >= failures and failed >= ratio * (ok + failed)) or breaker.state == "open"
