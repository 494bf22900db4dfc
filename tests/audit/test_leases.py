"""The audit of `budget-leases` (`streams.audit.leases`): hand-made histories breaking a lease
rule are named; whatever the lease rules do, however their events interleave, passes."""

from __future__ import annotations

from collections import defaultdict

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.codec import encode
from models.events import AdRequest
from streams.audit.findings import Record
from streams.audit.leases import LeaseHistory, Served, breaches
from streams.state.campaigns import CampaignRules
from streams.state.leases import (
    LeaseAsk,
    LeaseEvent,
    LeaseGrant,
    LeaseReturn,
    Terms,
    to_record,
)
from tests.audit.support import URL, History, Simulator, campaign, kinds_of, request, served
from tests.pipeline.harness import BASE_MS
from tests.state.test_leases import CAMPAIGN, build, run, step_st, terms_st

COST = 5_000
"""One impression of a campaign at cpm 5.00, in micros."""


def budgeted(history: History, lifetime: str = "0.01") -> CampaignRules:
    return history.campaign(campaign(URL, campaign_id="b", cpm="5.00", lifetime=lifetime))


def serve(history: History, rules: CampaignRules, partition: int, at: int) -> AdRequest:
    item = request("b", at, f"u-{partition}-{at}")
    history.request(item, partition)
    history.decision(served(item, rules))
    return item


def ask(partition: int, seq: int, *, spent: int = 0) -> LeaseAsk:
    return LeaseAsk("b", partition, seq, None, 2 * COST, spent, BASE_MS)


def grant(rules: CampaignRules, partition: int, seq: int, amount: int, granted: int) -> LeaseGrant:
    return LeaseGrant(
        "b",
        partition,
        seq,
        None,
        amount,
        granted,
        rules.version,
        rules.lifetime_micros,
        None,
        seq,
        None,
    )


def found(history: History) -> set[tuple[str, str | None]]:
    return {(v.kind, v.request_id) for v in history.summary().violations}


def test_a_served_decision_with_no_lease_is_named() -> None:
    history = History()
    rules = budgeted(history)
    item = serve(history, rules, 0, BASE_MS)
    assert found(history) == {("lease_overspent", item.context.request_id)}


def test_a_partition_spending_past_its_lease_is_named_though_the_campaign_is_within_budget() -> (
    None
):
    history = History()
    rules = budgeted(history)
    history.lease_event(ask(0, 1), BASE_MS)
    history.lease_event(grant(rules, 0, 1, 2 * COST, 2 * COST), BASE_MS)
    fine = serve(history, rules, 0, BASE_MS)
    beyond = serve(history, rules, 1, BASE_MS + 1)  # partition 1 holds no lease
    summary = history.summary()
    assert kinds_of(summary, fine.context.request_id) == set()
    assert kinds_of(summary, beyond.context.request_id) == {"lease_overspent"}
    assert "budget_exceeded" not in summary.by_kind()


def test_a_grant_beyond_the_budget_is_named() -> None:
    history = History()
    rules = budgeted(history)  # two impressions
    history.lease_event(ask(0, 1), BASE_MS)
    history.lease_event(grant(rules, 0, 1, 3 * COST, 3 * COST), BASE_MS)
    summary = history.summary()
    assert {v.kind for v in summary.violations} == {"lease_overgranted"}
    assert all(v.request_id is None for v in summary.violations)
    assert any("over its lifetime budget 0.01" in v.detail for v in summary.violations)


def test_grants_within_the_budget_one_by_one_but_not_together_are_named() -> None:
    history = History()
    rules = budgeted(history)
    for partition in (0, 1):
        history.lease_event(ask(partition, 1), BASE_MS)
        history.lease_event(grant(rules, partition, 1, 2 * COST, 2 * COST), BASE_MS)
    (violation,) = history.summary().violations
    assert violation.kind == "lease_overgranted"
    assert violation.detail.startswith("b: 0.02 granted and not returned")


def test_what_comes_back_is_the_banks_to_grant_again() -> None:
    history = History()
    rules = budgeted(history)
    history.lease_event(ask(0, 1), BASE_MS)
    history.lease_event(grant(rules, 0, 1, 2 * COST, 2 * COST), BASE_MS)
    history.lease_event(LeaseReturn("b", 0, 2, None, 2 * COST, 2 * COST, 0, BASE_MS), BASE_MS)
    history.lease_event(ask(1, 1), BASE_MS)
    history.lease_event(grant(rules, 1, 1, 2 * COST, 2 * COST), BASE_MS)
    serve(history, rules, 1, BASE_MS)
    serve(history, rules, 1, BASE_MS + 1)
    assert found(history) == set()


def test_a_report_of_more_than_was_granted_is_named() -> None:
    history = History()
    rules = budgeted(history)
    history.lease_event(ask(0, 1), BASE_MS)
    history.lease_event(grant(rules, 0, 1, COST, COST), BASE_MS)
    history.lease_event(ask(0, 2, spent=2 * COST), BASE_MS)
    (violation,) = history.summary().violations
    assert (violation.kind, violation.request_id) == ("lease_overspent", None)
    assert "report 2 counts 0.01 spent" in violation.detail


def test_a_grant_under_a_budget_its_version_lacks_or_with_a_gap_is_invalid() -> None:
    history = History()
    rules = budgeted(history)
    history.lease_event(ask(0, 1), BASE_MS)
    history.lease_event(grant(rules, 0, 1, COST, COST), BASE_MS)
    bigger = msgspec.structs.replace(grant(rules, 0, 2, COST, 2 * COST), lifetime_limit=10 * COST)
    history.lease_event(bigger, BASE_MS)
    history.lease_event(grant(rules, 0, 3, COST, 4 * COST), BASE_MS)  # 2 + 1 is not 4
    details = [v.detail for v in history.summary().violations if v.kind == "lease_invalid"]
    assert len(details) == 2
    assert "carries another budget than version" in details[0]
    assert "gap" in details[1]


def test_a_simulated_worker_under_changing_budgets_passes() -> None:
    sim = Simulator()
    sim.load(campaign(URL, campaign_id="b", cpm="5.00", lifetime="0.05", daily="0.02"))
    for i in range(12):
        sim.decide(request("b", BASE_MS + i * 3_600_000, f"u{i}"), "no_fill" if i % 5 else "served")
        if i == 6:
            sim.load(campaign(URL, campaign_id="b", cpm="5.00", lifetime="0.03"))
    summary = sim.history.summary()
    assert summary.violations == []
    assert summary.records["leases"] > 0


# Whatever the lease rules do passes: one bank and up to four partitions, events delivered
# late, again, or not yet, budgets changing on each side at its own moment.


def records(events: list[LeaseEvent]) -> list[Record]:
    """The events as `budget-leases` holds them: asks and returns on the bank's partition
    (here 0), grants and reclaims on their own; offsets per partition."""
    offsets: defaultdict[int, int] = defaultdict(int)
    found = []
    for event in events:
        partition = 0 if isinstance(event, LeaseAsk | LeaseReturn) else event.partition
        found.append(Record(partition, offsets[partition], BASE_MS, None, encode(to_record(event))))
        offsets[partition] += 1
    return found


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 4),
    configs=st.lists(terms_st, min_size=1, max_size=3),
    steps=st.lists(step_st, max_size=300),
)
def test_the_lease_rules_always_pass(
    n: int, configs: list[Terms], steps: list[tuple[str, int, int | bool]]
) -> None:
    world = build(n, configs)
    run(world, steps)
    for settled in (False, True):
        if settled:
            world.settle()
        history = LeaseHistory()
        for record in records(world.log):
            history.add(record)
        spent = [
            Served(f"{p}-{i}", (CAMPAIGN, p, terms.account(t)), i, cost, t)
            for p, taken in world.taken.items()
            for i, (t, cost, leased, terms) in enumerate(taken)
            if leased
        ]
        budgets = {(CAMPAIGN, terms.version): terms for terms in world.terms}
        assert breaches(history, spent, budgets) == []
