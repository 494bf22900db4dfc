"""The pure verifier (`streams.audit.verify`): histories built in memory, no Kafka.

A correct worker's history (`Simulator`, the worker's own rules one request at a time) must
pass whatever it holds; each kind of forgery must be named with the request it concerns.
"""

from __future__ import annotations

import random

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.codec import encode
from models.events import AdDenied, AdRequest, AdServed, DenialReason
from streams.audit.window import Window
from tests.audit.support import (
    URL,
    History,
    Simulator,
    campaign,
    denied,
    kinds_of,
    request,
    served,
    with_fields,
)
from tests.pipeline.harness import BASE_MS, DAY_MS

MINUTE = 60_000
HOUR = 60 * MINUTE


def test_a_correct_history_passes_and_is_counted() -> None:
    sim = Simulator()
    capped = sim.load(campaign(URL, campaign_id="capped", caps=[(2, 3600)], lifetime="0.01"))
    sim.load(campaign(URL, campaign_id="paused", active=False))
    requests = [request("capped", BASE_MS + i * MINUTE, "u1") for i in range(5)]
    for item in requests:
        sim.decide(item)
    sim.decide(requests[0])  # re-sent: no second decision
    sim.decide(request("paused", BASE_MS, "u1"))
    sim.decide(request("gone", BASE_MS, "u1"))
    sim.decide(request("capped", BASE_MS, None))  # anonymous
    sim.history.raw_request(b"{not json", BASE_MS)
    summary = sim.history.summary()
    assert summary.violations == []
    assert (summary.requests, summary.valid, summary.duplicates, summary.distinct) == (10, 9, 1, 8)
    assert summary.dead_lettered == {"undecodable": 1}
    assert summary.served == 2
    assert summary.denied == {
        "frequency_cap": 3,
        "campaign_unknown": 1,
        "campaign_inactive": 1,
        "anonymous": 1,
    }
    assert [(s.campaign_id, s.currency, s.served, s.micros) for s in summary.spend] == [
        ("capped", "USD", 2, 2 * capped.cost_micros)
    ]


def test_missing_extra_and_duplicate_decisions() -> None:
    sim = Simulator()
    sim.load(campaign(URL, campaign_id="c"))
    first, second = request("c", BASE_MS, "u1"), request("c", BASE_MS + 1, "u2")
    one, two = sim.decide(first), sim.decide(second)
    assert one is not None and two is not None
    sim.history.replace(one, None)
    sim.history.decision(two)  # decided twice
    stranger = request("c", BASE_MS + 2, "u3")
    sim.history.decision(denied(stranger, "no_fill", 0, "303"))  # never requested
    summary = sim.history.summary()
    assert kinds_of(summary, first.context.request_id) == {"no_decision"}
    assert kinds_of(summary, second.context.request_id) == {"duplicate_decision"}
    assert kinds_of(summary, stranger.context.request_id) == {"decision_without_request"}


def test_invalid_requests_need_no_decision_but_a_decision_for_one_is_caught() -> None:
    history = History()
    rules = history.campaign(campaign(URL, campaign_id="c"))
    # Event time more than a minute ahead of its record's timestamp: the worker refuses it.
    ahead = request("c", BASE_MS + 5 * MINUTE, "u1")
    history.append("requests", b"u1", encode(ahead), BASE_MS, 0)
    history.decision(served(ahead, rules))
    summary = history.summary()
    assert summary.dead_lettered == {"invalid": 1}
    assert kinds_of(summary, ahead.context.request_id) == {"decision_without_request"}


def test_wrong_cost_currency_and_copied_fields() -> None:
    sim = Simulator()
    sim.load(campaign(URL, campaign_id="c", cpm="2.50"))
    requests = [request("c", BASE_MS + i, f"u{i}") for i in range(3)]
    decided = [d for d in map(sim.decide, requests) if isinstance(d, AdServed)]
    assert len(decided) == 3
    sim.history.replace(decided[0], with_fields(decided[0], cost="0.0025"))  # right
    sim.history.replace(decided[1], with_fields(decided[1], cost="0.0026"))
    sim.history.replace(decided[2], with_fields(decided[2], currency="EUR", user_id="else"))
    summary = sim.history.summary()
    assert kinds_of(summary, requests[0].context.request_id) == set()
    assert kinds_of(summary, requests[1].context.request_id) == {"wrong_cost"}
    assert kinds_of(summary, requests[2].context.request_id) == {"wrong_cost", "decision_mismatch"}


def test_versions_must_name_a_configuration_of_the_campaign_in_force() -> None:
    sim = Simulator()
    a1 = sim.load(campaign(URL, campaign_id="a"))
    b1 = sim.load(campaign(URL, campaign_id="b"))
    invalid_at = sim.history.raw_campaign("a", b'{"schema": 1, "campaign_id": "a"}')
    a2 = sim.load(campaign(URL, campaign_id="a", cpm="3.00"))
    cases = {
        "other campaign's": b1.version,
        "invalid": invalid_at,
        "nowhere": 99,
    }
    forged = {}
    for n, (label, version) in enumerate(cases.items()):
        item = request("a", BASE_MS + n, f"user-{label}")
        event = sim.decide(item)
        assert isinstance(event, AdServed) and event.campaign_version == a2.version
        sim.history.replace(event, with_fields(event, campaign_version=version))
        forged[label] = item.context.request_id
    # An older version after a newer one for the same user (same partition): not in force.
    later = request("a", BASE_MS + 10, "user-nowhere")
    event = sim.decide(later)
    assert isinstance(event, AdServed)
    sim.history.replace(event, served(later, a1))
    unknown = request("a", BASE_MS + 11, "user-nowhere")
    event = sim.decide(unknown)
    assert event is not None
    sim.history.replace(event, denied(unknown, "campaign_unknown", None))
    summary = sim.history.summary()
    for label, request_id in forged.items():
        assert kinds_of(summary, request_id) == {"wrong_version"}, label
    assert "version_not_in_force" in kinds_of(summary, later.context.request_id)
    assert kinds_of(summary, unknown.context.request_id) == {"version_not_in_force"}
    details = {v.request_id: v.detail for v in summary.violations}
    assert "campaign 'b'" in details[forged["other campaign's"]]
    assert "invalid" in details[forged["invalid"]]


def test_unknown_after_a_deletion_is_plausible() -> None:
    sim = Simulator()
    sim.load(campaign(URL, campaign_id="c"))
    sim.decide(request("c", BASE_MS, "u1"))
    sim.delete("c")
    sim.decide(request("c", BASE_MS + 1, "u1"))
    assert sim.history.summary().violations == []


def test_cap_and_budget_breaches_name_the_request_that_broke_them() -> None:
    sim = Simulator()
    capped = sim.load(campaign(URL, campaign_id="capped", caps=[(2, 3600)]))
    budget = sim.load(campaign(URL, campaign_id="budget", cpm="5.00", lifetime="0.01"))
    cap_requests = [request("capped", BASE_MS + i * MINUTE, "u1") for i in range(3)]
    budget_requests = [request("budget", BASE_MS + i, f"u{i}") for i in range(3)]
    for item in [*cap_requests, *budget_requests]:
        sim.decide(item)
    third_cap, third_budget = sim.decisions[2], sim.decisions[5]
    assert isinstance(third_cap, AdDenied) and third_cap.reason == "frequency_cap"
    assert isinstance(third_budget, AdDenied) and third_budget.reason == "budget_exhausted"
    sim.history.replace(third_cap, served(cap_requests[2], capped))
    sim.history.replace(third_budget, served(budget_requests[2], budget))
    summary = sim.history.summary()
    # The forged serve spent from no lease: partition 0 was granted exactly two impressions.
    assert [(v.kind, v.request_id) for v in summary.violations] == sorted(
        [
            ("cap_exceeded", cap_requests[2].context.request_id),
            ("budget_exceeded", budget_requests[2].context.request_id),
            ("lease_overspent", budget_requests[2].context.request_id),
        ],
        key=lambda kv: (kv[1] or "", kv[0]),
    )


def test_a_cap_added_later_counts_impressions_served_before_it() -> None:
    """docs/design.md counts every impression of the user for the campaign, so a cap introduced
    by an update applies to what was served before it. The worker records every impression
    (for its impression history) and denies the fourth; a worker that forgot the uncapped
    ones would serve it, and the audit flags that."""
    history = History()
    uncapped = history.campaign(campaign(URL, campaign_id="c"))
    items = [request("c", BASE_MS + i * MINUTE, "u1") for i in range(4)]
    for item in items[:3]:
        history.request(item)
        history.decision(served(item, uncapped))
    capped = history.campaign(campaign(URL, campaign_id="c", caps=[(2, 3600)]))
    history.request(items[3])
    history.decision(served(items[3], capped))  # as if the uncapped ones were not recorded
    summary = history.summary()
    assert [(v.kind, v.request_id) for v in summary.violations] == [
        ("cap_exceeded", items[3].context.request_id)
    ]
    # Well within any impression history: the same whatever history the audit is told.
    assert history.summary(history_ms=HOUR).violations == summary.violations


def test_a_cap_longer_than_the_history_is_held_to_the_history() -> None:
    """A worker keeps a week of impressions (or the longest window, if longer): a 30-day cap
    added after two impressions 9 and 8 days ago counts neither. The audit, told the
    history, holds the cap to its last week; without it, to the whole 30 days."""
    day, week = DAY_MS, 7 * DAY_MS
    history = History()
    uncapped = history.campaign(campaign(URL, campaign_id="c"))
    early = [request("c", BASE_MS + i * day, "u1") for i in range(2)]
    for item in early:
        history.request(item)
        history.decision(served(item, uncapped))
    capped = history.campaign(campaign(URL, campaign_id="c", caps=[(2, 30 * 86_400)]))
    late = [request("c", BASE_MS + 9 * day + i * MINUTE, "u1") for i in range(3)]
    for item in late:
        history.request(item)
        history.decision(served(item, capped))
    strict = history.summary()
    assert [(v.kind, v.request_id) for v in strict.violations] == sorted(
        ("cap_exceeded", item.context.request_id) for item in late
    )
    # Within the week: two fit the cap, the third does not.
    told = history.summary(history_ms=week)
    assert [(v.kind, v.request_id) for v in told.violations] == [
        ("cap_exceeded", late[2].context.request_id)
    ]


def test_implausible_denials() -> None:
    sim = Simulator()
    rules = sim.load(campaign(URL, campaign_id="c", caps=[(3, 3600)], lifetime="1"))
    items = [request("c", BASE_MS + i, f"u{i}") for i in range(5)]
    for item in items:
        sim.decide(item)
    forgeries: list[tuple[DenialReason, int, str | None]] = [
        ("frequency_cap", rules.version, "3/3600s"),  # nobody was served anything before
        ("budget_exhausted", rules.version, "lifetime"),  # 1.00 has room for 0.0025
        ("campaign_inactive", rules.version, None),  # it is active
        ("frequency_cap", rules.version, "9/60s"),  # no such cap
    ]
    for item, (reason, version, detail) in zip(items, forgeries, strict=False):
        event = next(d for d in sim.decisions if d.request_id == item.context.request_id)
        sim.history.replace(event, denied(item, reason, version, detail))
    summary = sim.history.summary()
    for item in items[: len(forgeries)]:
        assert kinds_of(summary, item.context.request_id) == {"implausible_denial"}
    assert kinds_of(summary, items[4].context.request_id) == set()


def test_served_against_the_configuration() -> None:
    sim = Simulator()
    paused = sim.load(campaign(URL, campaign_id="paused", active=False))
    capped = sim.load(campaign(URL, campaign_id="capped", caps=[(1, 60)]))
    off, anonymous = request("paused", BASE_MS, "u1"), request("capped", BASE_MS, None)
    for item, rules in ((off, paused), (anonymous, capped)):
        event = sim.decide(item)
        assert isinstance(event, AdDenied)
        sim.history.replace(event, served(item, rules))
    summary = sim.history.summary()
    assert kinds_of(summary, off.context.request_id) == {"should_have_denied"}
    assert kinds_of(summary, anonymous.context.request_id) == {"should_have_denied"}


def test_a_window_reports_only_inside_but_keeps_the_state_from_before() -> None:
    sim = Simulator()
    rules = sim.load(campaign(URL, campaign_id="c", caps=[(1, 6 * 3600)]))
    before = request("c", BASE_MS, "u1")
    inside = request("c", BASE_MS + HOUR, "u1")
    sim.decide(before)
    event = sim.decide(inside)
    assert isinstance(event, AdDenied) and event.reason == "frequency_cap"
    sim.history.replace(event, served(inside, rules))
    early = request("c", BASE_MS - DAY_MS, "u2")
    sim.history.request(early)  # undecided, but before the window
    window = Window(BASE_MS + 1, BASE_MS + 2 * HOUR)
    summary = sim.history.summary(window)
    assert [(v.kind, v.request_id) for v in summary.violations] == [
        ("cap_exceeded", inside.context.request_id)
    ]
    assert (summary.requests, summary.served) == (1, 1)


def test_resent_after_a_day_may_be_decided_again() -> None:
    sim = Simulator()
    sim.load(campaign(URL, campaign_id="c"))
    original = request("c", BASE_MS, "u1")
    sim.decide(original)
    late_copy = msgspec.structs.replace(
        original,
        context=msgspec.structs.replace(original.context, timestamp=BASE_MS + 2 * DAY_MS),
    )
    sim.history.request(late_copy)
    sim.history.decision(served(late_copy, sim.rules["c"]))
    summary = sim.history.summary()
    assert summary.violations == []
    assert (summary.distinct, summary.duplicates) == (2, 0)


def test_undecodable_decision_records() -> None:
    history = History()
    history.append("served", b"c", b'{"schema": 1}', BASE_MS, 0)
    summary = history.summary()
    assert [(v.kind, v.request_id) for v in summary.violations] == [("undecodable_decision", None)]


# Property: whatever a correct worker decides passes; a forged serve is named. The streams
# come from a seed (hypothesis' own list strategies produced mostly unknown campaigns here):
# a few users on two campaigns whose caps, budgets and states change as requests arrive, some
# late, some re-sent, some unfilled.

CAMPAIGN_IDS = ["c1", "c2"]
CAPS = [(), ((2, 3600),), ((1, 600), (3, 7200)), ((5, 86_400),)]
BUDGETS = [(None, None), ("0.01", None), (None, "0.005"), ("0.02", "0.0075")]


def simulate(seed: int, length: int) -> Simulator:
    rng = random.Random(seed)
    sim = Simulator()
    for campaign_id in CAMPAIGN_IDS:
        sim.load(campaign(URL, campaign_id=campaign_id, caps=[(2, 3600)], lifetime="0.02"))
    t = BASE_MS + 12 * HOUR
    sent: list[AdRequest] = []
    for _ in range(length):
        roll = rng.random()
        if roll < 0.8:
            t += rng.randrange(0, 20 * MINUTE)
            at = t - (rng.randrange(0, 40 * MINUTE) if rng.random() < 0.15 else 0)
            user = rng.choice(["u1", "u1", "u2", "u3", None])
            campaign_id = rng.choice([*CAMPAIGN_IDS] * 5 + ["unknown"])
            ad_request = request(campaign_id, at, user, cookies=None if user else {})
            sent.append(ad_request)
            sim.decide(ad_request, "no_fill" if rng.random() < 0.1 else "served")
        elif roll < 0.9 and sent:
            sim.decide(rng.choice(sent))
        elif roll < 0.99:
            lifetime, daily = rng.choice(BUDGETS)
            sim.load(
                campaign(
                    URL,
                    campaign_id=rng.choice(CAMPAIGN_IDS),
                    caps=rng.choice(CAPS),
                    lifetime=lifetime,
                    daily=daily,
                    cpm=rng.choice(["2.50", "5.00", "1.25"]),
                    active=rng.random() < 0.9,
                    anonymous_policy=rng.choice(["deny", "uncapped"]),
                )
            )
        else:
            sim.delete(rng.choice(CAMPAIGN_IDS))
    return sim


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32), st.integers(10, 150))
def test_a_correct_worker_always_passes(seed: int, length: int) -> None:
    sim = simulate(seed, length)
    summary = sim.history.summary()
    assert summary.violations == []
    assert summary.served + sum(summary.denied.values()) == summary.distinct


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32), st.integers(10, 150))
def test_a_forged_serve_is_named(seed: int, length: int) -> None:
    """Turn one cap or budget denial into a serve: the audit names exactly that request."""
    sim = simulate(seed, length)
    rng = random.Random(seed)
    refused = [
        d
        for d in sim.decisions
        if isinstance(d, AdDenied)
        and (
            (d.reason == "frequency_cap" and d.detail != "late")
            or (d.reason == "budget_exhausted" and d.detail in ("lifetime", "daily"))
        )
    ]
    if not refused:
        return
    victim = rng.choice(refused)
    assert victim.campaign_version is not None
    rules = sim.versions[(victim.campaign_id, victim.campaign_version)]
    sim.history.replace(victim, served(sim.requests[victim.request_id], rules))
    summary = sim.history.summary()
    expected = "cap_exceeded" if victim.reason == "frequency_cap" else "budget_exceeded"
    assert expected in kinds_of(summary, victim.request_id)
