"""Cache-bust generations as plain state: what a key carries (hard busts) and when an entry
became stale (soft busts), per tenant and for everyone (`*`)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.generations import GLOBAL, Generations


def test_a_new_generations_keys_on_the_config_cache_bust_and_zero_generations() -> None:
    assert Generations().key_part("a") == ".0.0"
    gens = Generations("t1")
    assert gens.key_part("a") == gens.key_part("b") == "t1.0.0"
    assert gens.stale_since("a", gens.epoch) is None
    gens.cache_bust = "t2"  # a reload changes it: every key moves at once
    assert gens.key_part("a") == "t2.0.0"


def shown(described: dict[str, object]) -> dict[str, object]:
    """The parts of `describe` these tests are about."""
    return {k: described[k] for k in ("tenant", "hard", "soft", "key")}


def test_a_hard_bust_of_a_tenant_changes_only_that_tenants_keys() -> None:
    gens = Generations("t1")
    epoch = gens.epoch
    result = gens.bump("a", soft=False, now=100.0)
    assert shown(result) == {"tenant": "a", "hard": 1, "soft": 0, "key": "t1.0.1"}
    assert result["busted"] == "hard"
    assert gens.key_part("a") == "t1.0.1"
    assert gens.key_part("b") == "t1.0.0"
    gens.bump("a", soft=False, now=101.0)
    assert gens.key_part("a") == "t1.0.2"
    # A hard bust makes old entries unreachable; it stamps no epoch and marks nothing stale.
    assert gens.epoch == epoch
    assert gens.stale_since("a", epoch) is None


def test_a_global_hard_bust_changes_every_tenants_keys() -> None:
    gens = Generations("t1")
    gens.bump("a", soft=False, now=100.0)
    result = gens.bump(GLOBAL, soft=False, now=101.0)
    assert shown(result) == {"tenant": "*", "hard": 1, "soft": 0, "key": "t1.1.1"}
    assert gens.key_part("a") == "t1.1.1"
    assert gens.key_part("b") == "t1.1.0"
    assert gens.key_part("never-seen") == "t1.1.0"


def test_a_soft_bust_keeps_keys_and_makes_older_stamps_stale_from_its_time() -> None:
    gens = Generations("t1")
    before = gens.epoch  # a fill that started before the bust stamps this
    result = gens.bump("a", soft=True, now=100.0)
    assert shown(result) == {"tenant": "a", "hard": 0, "soft": 1, "key": "t1.0.0"}
    assert (result["busted"], result["epoch"]) == ("soft", before + 1)
    assert gens.epoch == before + 1
    assert gens.key_part("a") == "t1.0.0"  # still reachable: served stale, then refreshed
    assert gens.stale_since("a", before) == 100.0
    assert gens.stale_since("a", gens.epoch) is None  # stamped after the bust: current
    assert gens.stale_since("b", before) is None  # another tenant is untouched


def test_a_global_soft_bust_makes_every_tenant_stale_and_the_earlier_scope_wins() -> None:
    gens = Generations()
    stamp = gens.epoch
    gens.bump(GLOBAL, soft=True, now=100.0)
    assert gens.stale_since("a", stamp) == gens.stale_since("b", stamp) == 100.0
    after_global = gens.epoch
    gens.bump("a", soft=True, now=150.0)
    assert gens.stale_since("a", stamp) == 100.0  # stale since the global bust, the earlier
    assert gens.stale_since("a", after_global) == 150.0  # stored between: only a's own bust
    assert gens.stale_since("b", after_global) is None
    assert gens.stale_since("a", gens.epoch) is None


def test_a_tenant_bust_before_a_global_one_still_dates_the_tenants_older_entries() -> None:
    gens = Generations()
    stamp = gens.epoch
    gens.bump("a", soft=True, now=100.0)
    gens.bump(GLOBAL, soft=True, now=200.0)
    assert gens.stale_since("a", stamp) == 100.0
    assert gens.stale_since("b", stamp) == 200.0


def test_describe_reports_a_tenants_generations_and_key() -> None:
    gens = Generations("t1")
    assert shown(gens.describe("a")) == {"tenant": "a", "hard": 0, "soft": 0, "key": "t1.0.0"}
    gens.bump("a", soft=False, now=1.0)
    gens.bump("a", soft=True, now=2.0)
    gens.bump(GLOBAL, soft=True, now=3.0)
    assert shown(gens.describe("a")) == {"tenant": "a", "hard": 1, "soft": 1, "key": "t1.0.1"}
    assert shown(gens.describe(GLOBAL)) == {"tenant": "*", "hard": 0, "soft": 1,
                                           "key": "t1.0.0"}
    assert shown(gens.describe("b")) == {"tenant": "b", "hard": 0, "soft": 0, "key": "t1.0.0"}


def test_a_second_soft_bust_does_not_move_when_older_entries_became_stale() -> None:
    gens = Generations()
    stamp = gens.epoch
    gens.bump("a", soft=True, now=10.0)
    gens.bump("a", soft=True, now=20.0)
    assert gens.stale_since("a", stamp) == 10.0


# -- properties ---------------------------------------------------------------------------------

TENANTS = ("a", "b", GLOBAL)


@dataclass(frozen=True)
class Bust:
    scope: str
    soft: bool
    after: float  # seconds after the previous step


@dataclass
class Model:
    """What the generations should say, kept the obvious way: every bust, in order."""

    soft: list[tuple[str, int, float]]  # (scope, the epoch it started, when)
    hard: dict[str, int]


busts = st.lists(
    st.builds(
        Bust,
        scope=st.sampled_from(TENANTS),
        soft=st.booleans(),
        after=st.floats(0, 1000, allow_nan=False),
    ),
    max_size=12,
)


def run(before: list[Bust], after: list[Bust]) -> tuple[Generations, Model, int, float]:
    """Play `before`, stamp an entry (as a fill starting then would), play `after`."""
    gens, model = Generations("cb"), Model([], {})
    now = 1_000_000.0

    def play(steps: list[Bust]) -> None:
        nonlocal now
        for bust in steps:
            now += bust.after
            gens.bump(bust.scope, soft=bust.soft, now=now)
            if bust.soft:
                model.soft.append((bust.scope, gens.epoch, now))
            else:
                model.hard[bust.scope] = model.hard.get(bust.scope, 0) + 1

    play(before)
    stamp = gens.epoch
    play(after)
    return gens, model, stamp, now


def earliest_after(model: Model, tenant: str, stamp: int) -> float | None:
    times = [at for scope, epoch, at in model.soft if scope in (tenant, GLOBAL) and stamp < epoch]
    return min(times, default=None)


@settings(max_examples=300, deadline=None)
@given(before=busts, after=busts)
def test_an_entry_stamped_at_the_current_epoch_is_never_stale_and_keys_follow_hard_busts(
    before: list[Bust], after: list[Bust]
) -> None:
    gens, model, _, _ = run(before, after)
    for tenant in TENANTS:
        assert gens.stale_since(tenant, gens.epoch) is None
        hard_all, hard_mine = model.hard.get(GLOBAL, 0), model.hard.get(tenant, 0)
        assert gens.key_part(tenant) == f"cb.{hard_all}.{hard_mine}"


@settings(max_examples=300, deadline=None)
@given(before=busts, after=busts)
def test_an_entry_is_stale_exactly_when_a_soft_bust_of_its_tenant_or_all_came_after_it(
    before: list[Bust], after: list[Bust]
) -> None:
    gens, model, stamp, now = run(before, after)
    for tenant in ("a", "b"):
        since = gens.stale_since(tenant, stamp)
        earliest = earliest_after(model, tenant, stamp)
        assert (since is None) == (earliest is None)
        if since is not None and earliest is not None:
            # one of those busts' times, and never before the first of them
            mine = {at for scope, epoch, at in model.soft
                    if scope in (tenant, GLOBAL) and stamp < epoch}
            assert since in mine
            assert earliest <= since <= now


@settings(max_examples=300, deadline=None)
@given(before=busts, after=busts)
def test_stale_since_is_the_earliest_soft_bust_of_its_tenant_or_all_after_its_stamp(
    before: list[Bust], after: list[Bust]
) -> None:
    gens, model, stamp, _ = run(before, after)
    for tenant in ("a", "b"):
        assert gens.stale_since(tenant, stamp) == earliest_after(model, tenant, stamp)


def test_soft_busts_kept_per_scope_are_bounded_and_the_oldest_kept_stands_in() -> None:
    from gateway.generations import SOFT_BUSTS_KEPT

    gens = Generations()
    stamp = gens.epoch
    for i in range(SOFT_BUSTS_KEPT + 36):
        gens.bump("a", soft=True, now=float(i))
    assert len(gens.soft["a"]) == SOFT_BUSTS_KEPT
    assert gens.stale_since("a", stamp) == 36.0  # the oldest bust still remembered


def test_what_an_operator_reads_of_busts_is_counts_and_a_time_not_the_epoch() -> None:
    generations = Generations("1")
    generations.bump("p1", soft=False, now=0.0)
    generations.bump("*", soft=True, now=10.0)  # another scope moves the shared epoch
    described = generations.bump("p1", soft=True, now=1_796_126_400.0)
    assert described == {
        "tenant": "p1", "hard": 1, "soft": 1, "last_soft_bust": "2026-12-01T12:00:00Z",
        "key": "1.0.1", "epoch": 3, "busted": "soft",
    }
