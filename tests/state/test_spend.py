"""`streams.state.spend`: lifetime and daily (UTC day of event time) budgets, to the micro."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.state.spend import DAYS_KEPT, MS_PER_DAY, Spend, charge, exceeded_budget, utc_day

# 2024-03-10T00:00:00Z: a UTC midnight
MIDNIGHT = int(datetime(2024, 3, 10, tzinfo=UTC).timestamp() * 1000)
HOUR = 3_600_000


def test_midnight_is_a_day_boundary() -> None:
    assert MIDNIGHT % MS_PER_DAY == 0
    assert utc_day(MIDNIGHT) == utc_day(MIDNIGHT - 1) + 1
    assert utc_day(MIDNIGHT + MS_PER_DAY - 1) == utc_day(MIDNIGHT)
    assert utc_day(0) == 0
    assert utc_day(MIDNIGHT) == (datetime(2024, 3, 10) - datetime(1970, 1, 1)).days


def test_no_limits_never_refuse() -> None:
    spend = Spend(lifetime=10**15, daily={utc_day(MIDNIGHT): 10**15})
    assert exceeded_budget(spend, 10**9, MIDNIGHT, None, None) is None


def test_the_last_ad_that_fits_to_the_micro_and_the_first_that_does_not() -> None:
    limit = 10_000_000  # "10.00"
    cost = 2_500
    spend = Spend()
    served = 0
    while exceeded_budget(spend, cost, MIDNIGHT, limit, None) is None:
        charge(spend, cost, MIDNIGHT)
        served += 1
    assert served == 4_000
    assert spend.lifetime == limit
    assert exceeded_budget(spend, 1, MIDNIGHT, limit, None) == "lifetime"
    assert exceeded_budget(spend, 0, MIDNIGHT, limit, None) is None


@pytest.mark.parametrize(("spent", "fits"), [(9_997_500, True), (9_997_501, False)])
def test_lifetime_boundary(spent: int, fits: bool) -> None:
    spend = Spend(lifetime=spent)
    verdict = exceeded_budget(spend, 2_500, MIDNIGHT, 10_000_000, None)
    assert verdict == (None if fits else "lifetime")


@pytest.mark.parametrize(("spent", "fits"), [(997_500, True), (997_501, False)])
def test_daily_boundary(spent: int, fits: bool) -> None:
    day = utc_day(MIDNIGHT)
    spend = Spend(lifetime=spent, daily={day: spent}, oldest_day=day - 2)
    verdict = exceeded_budget(spend, 2_500, MIDNIGHT + HOUR, None, 1_000_000)
    assert verdict == (None if fits else "daily")


def test_daily_budget_rolls_over_at_utc_midnight() -> None:
    daily = 5_000
    spend = Spend()
    last_ms = MIDNIGHT - 1  # 23:59:59.999
    charge(spend, 5_000, last_ms)
    assert exceeded_budget(spend, 1, last_ms, None, daily) == "daily"
    assert exceeded_budget(spend, 1, MIDNIGHT - MS_PER_DAY, None, daily) == "daily"
    # 00:00:00.000 the next day starts from nothing.
    assert exceeded_budget(spend, 5_000, MIDNIGHT, None, daily) is None
    charge(spend, 5_000, MIDNIGHT)
    assert spend.daily == {utc_day(last_ms): 5_000, utc_day(MIDNIGHT): 5_000}
    assert exceeded_budget(spend, 1, MIDNIGHT + MS_PER_DAY - 1, None, daily) == "daily"
    assert exceeded_budget(spend, 5_000, MIDNIGHT + MS_PER_DAY, None, daily) is None


def test_lifetime_and_daily_together() -> None:
    lifetime, daily = 12_000, 5_000
    spend = Spend()
    outcomes = []
    for day in range(4):
        for _ in range(3):
            t = MIDNIGHT + day * MS_PER_DAY + HOUR
            verdict = exceeded_budget(spend, 2_000, t, lifetime, daily)
            outcomes.append(verdict)
            if verdict is None:
                charge(spend, 2_000, t)
    assert outcomes == [
        *[None, None, "daily"],
        *[None, None, "daily"],
        *[None, None, "lifetime"],
        *["lifetime", "lifetime", "lifetime"],
    ]
    assert spend.lifetime == 12_000
    # When both would be exceeded, the lifetime budget is the one named.
    full = Spend(lifetime=12_000, daily={utc_day(MIDNIGHT): 5_000}, oldest_day=utc_day(MIDNIGHT))
    assert exceeded_budget(full, 1, MIDNIGHT, lifetime, daily) == "lifetime"


def test_pending_amounts_count_like_spend() -> None:
    day = utc_day(MIDNIGHT)
    spend = Spend(lifetime=1_000, daily={day: 1_000}, oldest_day=day)
    assert exceeded_budget(spend, 1_000, MIDNIGHT, 3_000, None, pending_lifetime=1_000) is None
    assert exceeded_budget(spend, 1_000, MIDNIGHT, 3_000, None, pending_lifetime=1_001) == (
        "lifetime"
    )
    assert exceeded_budget(spend, 1_000, MIDNIGHT, None, 3_000, 0, 1_000) is None
    assert exceeded_budget(spend, 1_000, MIDNIGHT, None, 3_000, 0, 1_001) == "daily"
    # Pending lifetime spend alone does not touch the daily budget.
    assert exceeded_budget(spend, 1_000, MIDNIGHT, None, 3_000, 10**9, 0) is None


def test_days_are_dropped_and_late_days_refused_only_under_a_daily_limit() -> None:
    spend = Spend()
    today = utc_day(MIDNIGHT)
    charge(spend, 100, MIDNIGHT)
    assert spend.oldest_day == today - DAYS_KEPT + 1
    charge(spend, 100, MIDNIGHT + 5 * MS_PER_DAY)
    assert spend.daily == {today + 5: 100}
    assert spend.oldest_day == today + 5 - DAYS_KEPT + 1
    oldest_ms = spend.oldest_day * MS_PER_DAY
    # The oldest kept day still has an exact total; the day before is gone.
    assert exceeded_budget(spend, 1, oldest_ms, None, 1_000) is None
    assert exceeded_budget(spend, 1, oldest_ms - 1, None, 1_000) == "daily (late)"
    assert exceeded_budget(spend, 1, oldest_ms - 1, 1_000, 1_000) == "daily (late)"
    # With no daily limit the day does not matter: only the lifetime budget.
    assert exceeded_budget(spend, 1, oldest_ms - 1, 1_000, None) is None
    assert exceeded_budget(spend, 801, oldest_ms - 1, 1_000, None) == "lifetime"
    # Charged on a dropped day: lifetime counts it, no day comes back.
    charge(spend, 50, oldest_ms - 1)
    assert spend.lifetime == 250
    assert spend.daily == {today + 5: 100}


def test_late_charges_within_the_kept_days_land_on_their_day() -> None:
    spend = Spend()
    charge(spend, 100, MIDNIGHT + 2 * MS_PER_DAY)
    charge(spend, 7, MIDNIGHT + 5)
    charge(spend, 3, MIDNIGHT + MS_PER_DAY)
    today = utc_day(MIDNIGHT)
    assert spend.daily == {today: 7, today + 1: 3, today + 2: 100}
    assert spend.lifetime == 110


def test_days_dropped_keep_state_bounded() -> None:
    spend = Spend()
    for day in range(365):
        for hour in (1, 13, 23):
            charge(spend, 1, MIDNIGHT + day * MS_PER_DAY + hour * HOUR)
        assert len(spend.daily) <= DAYS_KEPT
    assert spend.lifetime == 365 * 3
    last = utc_day(MIDNIGHT) + 364
    assert spend.daily == {last - 2: 3, last - 1: 3, last: 3}


# -- properties --------------------------------------------------------------------------------

limit_strategy = st.none() | st.integers(min_value=0, max_value=30).map(lambda k: k * 1_000)
charges = st.lists(
    st.tuples(
        # event times over 6 days, on the hour with +-1 ms around each midnight
        st.builds(
            lambda day, hour, jitter: MIDNIGHT + day * MS_PER_DAY + hour * HOUR + jitter,
            st.integers(min_value=0, max_value=5),
            st.sampled_from([0, 12, 23, 24]),
            st.sampled_from([-1, 0, 1]),
        ),
        st.sampled_from([0, 1, 999, 1_000, 2_000, 2_500]),
    ),
    max_size=60,
)


def run(
    spend: Spend,
    requests: list[tuple[int, int]],
    lifetime: int | None,
    daily: int | None,
) -> list[str | None]:
    verdicts = []
    for t, cost in requests:
        verdict = exceeded_budget(spend, cost, t, lifetime, daily)
        verdicts.append(verdict)
        if verdict is None:
            charge(spend, cost, t)
    return verdicts


@settings(max_examples=300)
@given(charges, limit_strategy, limit_strategy)
def test_spend_never_exceeds_a_budget(
    requests: list[tuple[int, int]], lifetime: int | None, daily: int | None
) -> None:
    spend = Spend()
    verdicts = run(spend, requests, lifetime, daily)
    charged = [r for r, v in zip(requests, verdicts, strict=True) if v is None]
    per_day: dict[int, int] = defaultdict(int)
    for t, cost in charged:
        per_day[utc_day(t)] += cost
    total = sum(cost for _, cost in charged)
    assert spend.lifetime == total
    if lifetime is not None:
        assert total <= lifetime
    if daily is not None:
        assert all(amount <= daily for amount in per_day.values())
    # The kept days are exact, and at most DAYS_KEPT of them.
    assert len(spend.daily) <= DAYS_KEPT
    for day, amount in spend.daily.items():
        assert day >= spend.oldest_day
        assert amount == per_day[day]
    if charged:
        assert spend.oldest_day == max(utc_day(t) for t, _ in charged) - DAYS_KEPT + 1
    # Refusals are justified by brute force over everything charged before.
    before: list[tuple[int, int]] = []
    for (t, cost), verdict in zip(requests, verdicts, strict=True):
        day_total = sum(c for x, c in before if utc_day(x) == utc_day(t))
        lifetime_total = sum(c for _, c in before)
        if verdict == "lifetime":
            assert lifetime is not None and lifetime_total + cost > lifetime
        elif verdict == "daily":
            assert daily is not None and day_total + cost > daily
        elif verdict == "daily (late)":
            assert daily is not None
            assert utc_day(t) < max(utc_day(x) for x, _ in before) - DAYS_KEPT + 1
        else:
            assert verdict is None
            before.append((t, cost))


@settings(max_examples=300)
@given(charges, limit_strategy, limit_strategy)
def test_in_order_decisions_are_exactly_the_design_rule(
    requests: list[tuple[int, int]], lifetime: int | None, daily: int | None
) -> None:
    in_order = sorted(requests)
    verdicts = run(Spend(), in_order, lifetime, daily)
    served: list[tuple[int, int]] = []
    for (t, cost), verdict in zip(in_order, verdicts, strict=True):
        lifetime_fits = lifetime is None or sum(c for _, c in served) + cost <= lifetime
        day_total = sum(c for x, c in served if utc_day(x) == utc_day(t))
        daily_fits = daily is None or day_total + cost <= daily
        assert (verdict is None) == (lifetime_fits and daily_fits)
        if verdict is None:
            served.append((t, cost))
