"""The lookup plan as a pure function: a clock value in, a plan out (gateway/plan.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.generations import Generations
from gateway.plan import (
    Fetch,
    Hit,
    OnlyIfCached,
    Pass,
    Plan,
    Revalidate,
    ServeStale,
    plan,
)
from gateway.policy import Freshness
from gateway.store import Entry

NOW = 1_000_000.0


def stored(age: float, lifetime: float = 60.0, swr: float = 0.0, **kw: object) -> Entry:
    """An entry received `age` seconds before NOW."""
    return Entry(
        key="k",
        tenant="t",
        url="http://h/p",
        status=200,
        headers=(),
        body=b"x",
        response_time=NOW - age,
        initial_age=0.0,
        freshness=Freshness(lifetime=lifetime, swr=swr),
        **kw,  # type: ignore[arg-type]
    )


def planned(
    entry: Entry | None,
    *request: tuple[str, str],
    generations: Generations | None = None,
    client_no_cache: str = "honor",
    **key: bool,
) -> Plan:
    return plan(
        CIMultiDict(request),
        entry,
        NOW,
        generations or Generations(),
        bust_grace=300.0,
        client_no_cache=client_no_cache,
        **key,
    )


def test_a_fresh_entry_is_a_hit_with_its_remaining_ttl() -> None:
    entry = stored(age=10)
    assert planned(entry) == Hit(entry, 50.0)


def test_nothing_stored_is_a_fetch_rfc9111_4() -> None:
    assert planned(None) == Fetch("uri-miss")


def test_a_stale_entry_is_revalidated_rfc9111_4_3() -> None:
    entry = stored(age=61)
    assert planned(entry) == Revalidate(entry, "stale")


def test_a_stale_entry_within_stale_while_revalidate_is_served_rfc5861_3() -> None:
    entry = stored(age=70, swr=30)
    assert planned(entry) == ServeStale(entry, -10.0)


def test_a_client_no_cache_revalidates_a_fresh_entry_rfc9111_5_2_1_4() -> None:
    entry = stored(age=1)
    assert planned(entry, ("Cache-Control", "no-cache")) == Revalidate(entry, "request")


def test_only_if_cached_never_goes_to_the_origin_rfc9111_5_2_1_7() -> None:
    assert planned(None, ("Cache-Control", "only-if-cached")) == OnlyIfCached()
    fresh = stored(age=1)
    assert planned(fresh, ("Cache-Control", "only-if-cached")) == Hit(fresh, 59.0)


def test_credentials_fetch_alone_rfc9111_3_5() -> None:
    stale = stored(age=100)
    assert planned(stale, alone=True) == Pass(stale, "stale")


def test_a_no_store_request_fetches_alone_unless_a_fill_runs() -> None:
    no_store = ("Cache-Control", "no-store")
    assert planned(None, no_store) == Pass(None, "uri-miss")
    assert planned(None, no_store, fill_running=True) == Fetch("uri-miss")


def test_a_soft_bust_makes_a_fresh_entry_stale_within_its_grace_then_a_miss() -> None:
    recent, old = Generations(), Generations()
    entry = stored(age=1, soft_generation=recent.epoch)
    recent.bump("t", soft=True, now=NOW - 10)
    old.bump("t", soft=True, now=NOW - 400)  # longer ago than the 300 s grace
    assert planned(entry, generations=recent) == ServeStale(entry, 0.0)
    assert planned(entry, generations=old) == Fetch("uri-miss")
    assert planned(entry, generations=Generations()) == Hit(entry, 59.0)


@given(
    age=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    lifetime=st.floats(min_value=0, max_value=1e6, allow_nan=False),
)
def test_without_directives_an_entry_is_a_hit_exactly_while_younger_than_its_lifetime(
    age: float, lifetime: float
) -> None:
    entry = stored(age=age, lifetime=lifetime)
    result = planned(entry)
    assert isinstance(result, Hit) == (entry.age(NOW) < lifetime)
    if not isinstance(result, Hit):
        assert result == Revalidate(entry, "stale")


@given(
    age=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    directive=st.sampled_from(["", "no-cache", "max-age=5", "only-if-cached", "no-store"]),
    fill_running=st.booleans(),
)
def test_a_request_with_credentials_never_shares_a_fill(
    age: float, directive: str, fill_running: bool
) -> None:
    request = [("Cache-Control", directive)] if directive else []
    result = planned(stored(age=age), *request, alone=True, fill_running=fill_running)
    assert not isinstance(result, Fetch | Revalidate)
