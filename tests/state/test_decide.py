"""`streams.state.decision_book`: the decision rules, and the book of pending reservations
the worker relies on."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings, target
from hypothesis import strategies as st

from models.events import Budget, Campaign, FrequencyCap
from streams.state import frequency, spend
from streams.state.campaigns import CampaignRules, Cap
from streams.state.decision_book import DecisionBook, Deny, Reservation, Reserve, Verdict, Wait
from streams.state.frequency import ALLOWED_LATENESS_MS, Impressions
from streams.state.leases import (
    Bank,
    BudgetBank,
    Covered,
    Lease,
    LeaseBook,
    Policy,
    Short,
    Terms,
    ToBank,
    ToPartition,
)
from streams.state.spend import MS_PER_DAY, Spend

MIDNIGHT = int(datetime(2024, 3, 10, tzinfo=UTC).timestamp() * 1000)
T0 = MIDNIGHT + 12 * 3_600_000
MINUTE = 60_000
HOUR = 60 * MINUTE


def make_rules(
    *,
    campaign_id: str = "c-1",
    active: bool = True,
    cpm: str = "2.50",
    lifetime: str | None = None,
    daily: str | None = None,
    caps: Sequence[tuple[int, int]] = ((3, 3600),),
    anonymous_policy: str = "deny",
    version: int = 7,
) -> CampaignRules:
    campaign = Campaign(
        schema=1,
        campaign_id=campaign_id,
        active=active,
        vast_url="https://ads.example.com/vast",
        cpm=cpm,
        currency="EUR",
        budget=Budget(lifetime=lifetime, daily=daily),
        frequency_caps=tuple(FrequencyCap(max=m, window_s=w) for m, w in caps),
        anonymous_policy=anonymous_policy,  # type: ignore[arg-type]
    )
    return CampaignRules.from_campaign(campaign, version)


def evaluate(
    book: DecisionBook,
    rules: CampaignRules | None,
    *,
    user_id: str | None = "u-1",
    t: int = T0,
    impressions: Impressions | None = None,
    request_id: str = "req-x",
) -> Verdict:
    return book.evaluate(
        request_id=request_id,
        user_id=user_id,
        t=t,
        rules=rules,
        impressions=impressions,
    )


def reservation(
    request_id: str,
    *,
    rules: CampaignRules,
    user_id: str | None = "u-1",
    t: int = T0,
    history_ms: int = 0,
) -> Reservation:
    """A reservation as the book's `keep_ms` makes it; with no history (the default here)
    a campaign keeps its longest window, as the unit tests of pruning want."""
    return Reservation(
        request_id=request_id,
        campaign_id=rules.campaign_id,
        user_id=user_id,
        t=t,
        cost=rules.cost_micros,
        keep_ms=frequency.kept_ms(rules.longest_window_ms, history_ms),
        keep_count=frequency.kept_count(rules.caps),
    )


# -- campaign rules ----------------------------------------------------------------------------


def test_rules_from_a_campaign() -> None:
    rules = make_rules(
        cpm="2.50",
        lifetime="100",
        daily="10.000001",
        caps=((3, 3600), (1, 60)),
        anonymous_policy="uncapped",
        version=42,
    )
    assert rules.cost_micros == 2_500
    assert rules.lifetime_micros == 100_000_000
    assert rules.daily_micros == 10_000_001
    assert rules.caps == (Cap(3, 3_600_000), Cap(1, 60_000))
    assert rules.longest_window_ms == 3_600_000
    assert rules.anonymous_allowed
    assert rules.version == 42
    assert [cap.label for cap in rules.caps] == ["3/3600s", "1/60s"]
    plain = make_rules(caps=(), cpm="0.001")
    assert plain.cost_micros == 1
    assert (plain.lifetime_micros, plain.daily_micros) == (None, None)
    assert plain.longest_window_ms == 0
    assert not plain.anonymous_allowed


# -- each reason -------------------------------------------------------------------------------


def test_unknown_campaign() -> None:
    assert evaluate(DecisionBook(), None) == Deny("campaign_unknown")


def test_inactive_campaign_comes_before_anything_else() -> None:
    rules = make_rules(active=False, lifetime="0")
    assert evaluate(DecisionBook(), rules, user_id=None) == Deny("campaign_inactive")


def test_anonymous_users_on_a_capped_campaign() -> None:
    book = DecisionBook()
    assert evaluate(book, make_rules(anonymous_policy="deny"), user_id=None) == Deny("anonymous")
    uncapped = make_rules(anonymous_policy="uncapped")
    assert evaluate(book, uncapped, user_id=None) == Reserve(2_500)


def test_anonymous_users_on_a_campaign_without_caps_are_served() -> None:
    rules = make_rules(caps=(), anonymous_policy="deny")
    assert evaluate(DecisionBook(), rules, user_id=None) == Reserve(2_500)


def test_anonymous_uncapped_users_are_never_capped() -> None:
    rules = make_rules(caps=((1, 3600),), anonymous_policy="uncapped", lifetime="0.005")
    book = DecisionBook()
    full = Impressions(times=[T0])
    assert evaluate(book, rules, user_id=None, impressions=full) == Reserve(2_500)
    # An anonymous reservation holds no cap slot: a known user's cap does not wait on it.
    book.reserve(reservation("anon", rules=rules, user_id=None))
    assert evaluate(book, rules, user_id="u-1") == Reserve(2_500)


def test_frequency_cap_names_the_cap() -> None:
    rules = make_rules(caps=((5, 86_400), (2, 3600)))
    impressions = Impressions(times=[T0 - 2 * MINUTE, T0 - MINUTE])
    verdict = evaluate(DecisionBook(), rules, impressions=impressions)
    assert verdict == Deny("frequency_cap", "2/3600s")
    one = Impressions(times=[T0 - MINUTE])
    assert evaluate(DecisionBook(), rules, impressions=one) == Reserve(2_500)


def test_frequency_cap_boundary_of_the_window() -> None:
    rules = make_rules(caps=((1, 3600),))
    impressions = Impressions(times=[T0])
    assert evaluate(DecisionBook(), rules, t=T0 + HOUR, impressions=impressions) == Reserve(2_500)
    assert evaluate(DecisionBook(), rules, t=T0 + HOUR - 1, impressions=impressions) == Deny(
        "frequency_cap", "1/3600s"
    )


def test_late_request_is_refused_as_a_frequency_cap() -> None:
    rules = make_rules(caps=((1, 60),))
    impressions = Impressions()
    frequency.record(impressions, T0, rules.longest_window_ms, frequency.MAX_KEPT_IMPRESSIONS)
    frequency.record(
        impressions, T0 + 5 * HOUR, rules.longest_window_ms, frequency.MAX_KEPT_IMPRESSIONS
    )
    assert impressions.times == [T0 + 5 * HOUR]
    # The window (T0 - 30 s, T0 + 30 s] held the impression dropped at T0.
    assert evaluate(DecisionBook(), rules, t=T0 + 30_000, impressions=impressions) == Deny(
        "frequency_cap", "late"
    )
    # Windows starting at or after T0 miss nothing that was dropped.
    assert evaluate(DecisionBook(), rules, t=T0 + MINUTE, impressions=impressions) == Reserve(2_500)


def test_other_users_and_campaigns_do_not_count() -> None:
    rules = make_rules(caps=((1, 3600),))
    other = make_rules(campaign_id="c-2", caps=((1, 3600),))
    book = DecisionBook()
    book.reserve(reservation("r-other-user", rules=rules, user_id="u-2"))
    book.reserve(reservation("r-other-campaign", rules=other, user_id="u-1"))
    assert evaluate(book, rules, user_id="u-1") == Reserve(2_500)


# -- pending reservations ----------------------------------------------------------------------


def test_wait_when_only_a_pending_reservation_takes_the_last_cap_slot() -> None:
    rules = make_rules(caps=((2, 3600),))
    book = DecisionBook()
    impressions = Impressions(times=[T0 - MINUTE])
    assert evaluate(book, rules, impressions=impressions) == Reserve(2_500)
    book.reserve(reservation("r-1", rules=rules, t=T0))
    assert len(book) == 1
    verdict = evaluate(book, rules, t=T0 + 1, impressions=impressions)
    assert verdict == Wait(frozenset({"r-1"}))
    # Released: the slot is free again.
    ended = book.end("r-1")
    assert ended.request_id == "r-1"
    assert len(book) == 0
    assert evaluate(book, rules, t=T0 + 1, impressions=impressions) == Reserve(2_500)
    # Served instead: committed, and now the cap refuses outright.
    frequency.record(impressions, ended.t, rules.longest_window_ms, frequency.MAX_KEPT_IMPRESSIONS)
    verdict = evaluate(book, rules, t=T0 + 1, impressions=impressions)
    assert verdict == Deny("frequency_cap", "2/3600s")


def test_a_pending_reservation_later_in_event_time_can_make_a_request_wait() -> None:
    rules = make_rules(caps=((1, 60),))
    book = DecisionBook()
    book.reserve(reservation("r-later", rules=rules, t=T0 + 30_000))
    assert evaluate(book, rules, t=T0) == Wait(frozenset({"r-later"}))
    assert evaluate(book, rules, t=T0 - 30_000) == Reserve(2_500)


def test_wait_when_a_pending_reservation_would_drop_what_the_windows_need() -> None:
    # One at a time, r-1 served at T0 + 3 h drops the impression at T0, and a request at
    # T0 + 30 s, whose window (T0 - 30 s, T0 + 30 s] held it, is refused as late.
    rules = make_rules(caps=((2, 60),))
    book = DecisionBook()
    impressions = Impressions(times=[T0])
    book.reserve(reservation("r-1", rules=rules, t=T0 + 3 * HOUR))
    late = T0 + 30_000
    assert evaluate(book, rules, t=late, impressions=impressions) == Wait(frozenset({"r-1"}))
    frequency.record(
        impressions, book.end("r-1").t, rules.longest_window_ms, frequency.MAX_KEPT_IMPRESSIONS
    )
    assert evaluate(book, rules, t=late, impressions=impressions) == Deny("frequency_cap", "late")
    # Released instead: nothing was dropped, and the request fits.
    book.reserve(reservation("r-2", rules=rules, t=T0 + 3 * HOUR))
    book.end("r-2")
    assert evaluate(book, rules, t=late, impressions=Impressions(times=[T0])) == Reserve(2_500)


def test_a_denial_names_a_cap_that_refuses_though_not_always_the_first() -> None:
    # The committed state alone refuses by the hourly cap, so the book denies at once
    # rather than wait for r-1. One at a time (r-1 served) the per-minute cap, listed
    # first, would refuse too: both name a cap that does refuse.
    rules = make_rules(caps=((1, 60), (2, 3600)))
    per_minute, hourly = rules.caps
    committed = Impressions(times=[T0 + 59 * MINUTE + 50_000, T0 + 59 * MINUTE + 55_000])
    book = DecisionBook()
    assert evaluate(book, rules, t=T0 - 10_000, impressions=committed) == Reserve(2_500)
    book.reserve(reservation("r-1", rules=rules, t=T0 - 10_000))
    assert evaluate(book, rules, t=T0, impressions=committed) == Deny("frequency_cap", "2/3600s")
    served = Impressions(times=sorted([*committed.times, T0 - 10_000]))
    assert evaluate(DecisionBook(), rules, t=T0, impressions=served) == Deny(
        "frequency_cap", "1/60s"
    )
    assert frequency.blocking_cap(served.times, [hourly], T0) == hourly
    assert frequency.blocking_cap(served.times, [per_minute], T0) == per_minute


def test_deny_not_wait_when_the_committed_state_alone_refuses() -> None:
    rules = make_rules(caps=((1, 3600),), lifetime="0.005")
    book = DecisionBook()
    book.reserve(reservation("r-1", rules=rules, t=T0 - 1))
    book.reserve(reservation("r-2", rules=rules, user_id="u-2", t=T0 - 1))
    capped = evaluate(book, rules, impressions=Impressions(times=[T0 - MINUTE]))
    assert capped == Deny("frequency_cap", "1/3600s")


def test_end_forgets_a_reservation_once() -> None:
    rules = make_rules()
    book = DecisionBook()
    first = reservation("r-1", rules=rules)
    book.reserve(first)
    assert book.end("r-1") == first
    with pytest.raises(KeyError):
        book.end("r-1")


# -- the worker's loop against one-at-a-time decisions -----------------------------------------

UNIT = 5 * MINUTE
USERS: tuple[str | None, ...] = ("u-1", "u-2", None)
USER_DRAWS = ["u-1", "u-1", "u-1", "u-2", None]


def cap_lists(window_unit: int) -> st.SearchStrategy[tuple[Cap, ...]]:
    return st.lists(
        st.builds(
            Cap,
            max=st.integers(min_value=1, max_value=3),
            window_ms=st.integers(min_value=1, max_value=6).map(lambda k: k * window_unit),
        ),
        max_size=2,
    ).map(tuple)


@st.composite
def campaign_rules(draw: st.DrawFn, campaign_id: str, window_unit: int) -> CampaignRules:
    limit = st.none() | st.integers(min_value=0, max_value=8).map(lambda k: k * 1_000)
    return CampaignRules(
        campaign_id=campaign_id,
        version=1,
        active=draw(st.sampled_from([True] * 9 + [False])),
        vast_url="https://ads.example.com/vast",
        currency="EUR",
        cost_micros=draw(st.sampled_from([0, 1_000, 1_000, 2_500])),
        lifetime_micros=draw(limit),
        daily_micros=draw(limit),
        caps=draw(cap_lists(window_unit)),
        anonymous_allowed=draw(st.booleans()),
    )


@dataclass(frozen=True)
class Request:
    request_id: str
    campaign_id: str
    user_id: str | None
    t: int
    fills: bool
    """Whether the upstream returns an ad, should the request get that far."""


@dataclass(frozen=True)
class Update:
    """A campaign update read between two requests: new caps (added, removed, lengthened,
    shortened), the rest of the campaign as it was. It applies to the requests after it."""

    rules: CampaignRules


Event = Request | Update
Outcome = tuple[Any, ...]


def requests_of(events: Sequence[Event]) -> list[Request]:
    return [e for e in events if isinstance(e, Request)]


@st.composite
def scenarios(
    draw: st.DrawFn, *, start: int, unit: int, units: int, window_unit: int
) -> tuple[dict[str, CampaignRules], list[Event]]:
    rules = {
        cid: draw(campaign_rules(cid, window_unit))
        for cid in draw(st.sampled_from([["c-1"], ["c-1", "c-2"]]))
    }
    requests = draw(
        st.lists(
            st.builds(
                lambda i, cid, user, k, jitter, fills: (
                    cid,
                    user,
                    start + k * unit + jitter,
                    fills,
                ),
                st.just(0),
                st.sampled_from([*rules, *rules, *rules, *rules, "c-unknown"]),
                st.sampled_from(USER_DRAWS),
                st.integers(min_value=0, max_value=units),
                st.sampled_from([-1, 0, 0, 1]),
                st.booleans() | st.just(True),
            ),
            min_size=2,
            max_size=30,
        )
    )
    events: list[Event] = [Request(f"r-{i}", *fields) for i, fields in enumerate(requests)]
    for cid, first in rules.items():
        for version in range(2, 2 + draw(st.integers(min_value=0, max_value=2), label="updates")):
            caps = draw(cap_lists(window_unit), label=f"caps of {cid} v{version}")
            update = Update(msgspec.structs.replace(first, version=version, caps=caps))
            events.insert(draw(st.integers(min_value=0, max_value=len(events))), update)
    return rules, events


def holds_cap_slot(rules: CampaignRules, user_id: str | None) -> bool:
    return bool(rules.caps) and user_id is not None


def in_window(times: Sequence[int], end: int, window_ms: int) -> int:
    return sum(1 for x in times if end - window_ms < x <= end)


def blocking_caps_by_brute_force(served: Sequence[int], caps: Sequence[Cap], t: int) -> list[Cap]:
    """The caps that one more impression at t would push over in some window containing t."""
    with_t = [*served, t]
    ends = {x + d for x in with_t for cap in caps for x in (x, x + cap.window_ms) for d in (-1, 0)}
    return [
        cap
        for cap in caps
        if any(
            in_window(with_t, s, cap.window_ms) > cap.max
            for s in ends
            if t <= s < t + cap.window_ms
        )
    ]


@dataclass(frozen=True)
class Expected:
    outcome: Outcome
    """("served", cost), ("no_fill",) or ("denied", reason)."""
    details: frozenset[str | None] = frozenset({None})
    """The details a denial may name: every cap or budget that refuses it."""


def reference(
    rules: dict[str, CampaignRules],
    events: Sequence[Event],
    *,
    lateness: bool,
    history_ms: int = frequency.DEFAULT_HISTORY_MS,
) -> list[Expected]:
    """One request at a time in stream order, the upstream's answer known, each campaign
    update applied where it stands: docs/design.md by brute force over everything served before,
    under whichever caps (none included) it was served. With `lateness`, a request is also
    refused as late when the state the modules keep, committed in stream order, says so."""
    rules = dict(rules)
    served: list[Request] = []
    impressions: dict[tuple[str, str | None], Impressions] = defaultdict(Impressions)
    newest: dict[str, int] = {}
    """Per campaign: the newest event time of a request that reached its budget."""
    expected: list[Expected] = []
    for r in events:
        if isinstance(r, Update):
            rules[r.rules.campaign_id] = r.rules
            continue
        rule = rules.get(r.campaign_id)
        if rule is None:
            expected.append(Expected(("denied", "campaign_unknown")))
            continue
        if not rule.active:
            expected.append(Expected(("denied", "campaign_inactive")))
            continue
        if rule.caps and r.user_id is None and not rule.anonymous_allowed:
            expected.append(Expected(("denied", "anonymous")))
            continue
        key = (r.campaign_id, r.user_id)
        if holds_cap_slot(rule, r.user_id):
            mine = [s.t for s in served if (s.campaign_id, s.user_id) == key]
            refusing = [cap.label for cap in blocking_caps_by_brute_force(mine, rule.caps, r.t)]
            if lateness and frequency.is_late(impressions[key], rule.caps, r.t):
                refusing.insert(0, "late")
            if refusing:
                expected.append(Expected(("denied", "frequency_cap"), frozenset(refusing)))
                continue
        ours = [s for s in served if s.campaign_id == r.campaign_id]
        day = r.t // MS_PER_DAY
        # A lease keeps a day for late requests while its event time is within DAYS_KEPT.
        newest[r.campaign_id] = max(newest.get(r.campaign_id, r.t), r.t)
        oldest_kept = newest[r.campaign_id] // MS_PER_DAY - spend.DAYS_KEPT + 1
        spent = len(ours) * rule.cost_micros
        spent_today = sum(rule.cost_micros for s in ours if s.t // MS_PER_DAY == day)
        exceeded = []
        if lateness and rule.daily_micros is not None and day < oldest_kept:
            exceeded.append("daily (late)")
        if rule.lifetime_micros is not None and spent + rule.cost_micros > rule.lifetime_micros:
            exceeded.append("lifetime")
        if rule.daily_micros is not None and spent_today + rule.cost_micros > rule.daily_micros:
            exceeded.append("daily")
        if exceeded:
            expected.append(Expected(("denied", "budget_exhausted"), frozenset(exceeded)))
        elif r.fills:
            served.append(r)
            if r.user_id is not None:  # capped campaign or not
                keep = frequency.kept_ms(rule.longest_window_ms, history_ms)
                frequency.record(impressions[key], r.t, keep, frequency.MAX_KEPT_IMPRESSIONS)
            expected.append(Expected(("served", rule.cost_micros)))
        else:
            expected.append(Expected(("no_fill",)))
    return expected


def assert_agree(outcomes: Sequence[Outcome], expected: Sequence[Expected]) -> None:
    """The same outcome for every request; a denial names a cap or budget that does refuse it."""
    assert [o[:2] if o[0] == "denied" else o for o in outcomes] == [e.outcome for e in expected]
    for outcome, e in zip(outcomes, expected, strict=True):
        if outcome[0] == "denied":
            assert outcome[2] in e.details


@dataclass
class Worker:
    """The worker's loop: decide in stream order while earlier upstream calls are in flight;
    a campaign update applies at once, to the requests after it, while reservations made
    under the rules before it are still pending (as in `streams.worker.decide_stage`).
    Budgets are one partition's lease, and its bank answers every ask at once."""

    rules: dict[str, CampaignRules]
    data: st.DataObject
    history_ms: int = frequency.DEFAULT_HISTORY_MS
    policy: Policy = field(default_factory=Policy)
    book: DecisionBook = field(init=False)
    lease_book: LeaseBook = field(init=False)
    bank_rules: BudgetBank = field(init=False)
    leases: dict[str, Lease] = field(default_factory=dict)
    banks: dict[str, Bank] = field(default_factory=dict)
    impressions: dict[tuple[str, str | None], Impressions] = field(default_factory=dict)
    spends: dict[str, Spend] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    fills: dict[str, bool] = field(default_factory=dict)
    waits: int = 0
    requests: dict[str, Request] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rules = dict(self.rules)
        self.book = DecisionBook(self.history_ms)
        self.lease_book = LeaseBook(self.policy)
        self.bank_rules = BudgetBank(self.policy)

    def exchange(self, rules: CampaignRules, events: list[ToBank]) -> None:
        """The bank and the lease answer each other until neither has more to say."""
        cid = rules.campaign_id
        bank = self.banks.setdefault(cid, Bank(cid))
        terms = Terms.of(rules)
        answers: list[ToPartition] = []
        if bank.terms is None or bank.terms.version < terms.version:
            answers += self.bank_rules.configure(bank, terms)
        while events or answers:
            for event in events:
                answers += self.bank_rules.receive(bank, event)
            events = []
            for answer in answers:
                events += self.lease_book.receive(self.leases[cid], answer, terms)
            answers = []

    def take(self, rules: CampaignRules, t: int) -> Covered | Short:
        lease = self.leases.setdefault(rules.campaign_id, Lease(rules.campaign_id, 0))
        verdict, asks = self.lease_book.take(lease, Terms.of(rules), t)
        self.exchange(rules, asks)
        return verdict

    def end(self, request_id: str) -> None:
        ended = self.book.end(request_id)
        if not self.fills[request_id]:
            rules = self.rules[ended.campaign_id]
            lease = self.leases[ended.campaign_id]
            self.exchange(
                rules, self.lease_book.give_back(lease, Terms.of(rules), ended.t, ended.cost)
            )
            self.outcomes[request_id] = ("no_fill",)
            return
        if ended.recorded:
            key = (ended.campaign_id, ended.user_id)
            frequency.record(
                self.impressions.setdefault(key, Impressions()),
                ended.t,
                ended.keep_ms,
                ended.keep_count,
            )
        spend.charge(self.spends.setdefault(ended.campaign_id, Spend()), ended.cost, ended.t)
        self.outcomes[request_id] = ("served", ended.cost)

    def end_some(self, request_ids: Sequence[str], *, label: str) -> None:
        for request_id in self.data.draw(st.permutations(sorted(request_ids)), label=label):
            self.end(request_id)

    def pending(self, campaign_id: str | None = None) -> list[str]:
        return [
            rid
            for rid, o in self.outcomes.items()
            if o == ("pending",) and campaign_id in (None, self.requests[rid].campaign_id)
        ]

    def decide(self, r: Request) -> None:
        self.requests[r.request_id] = r
        self.fills[r.request_id] = r.fills
        pending = self.pending()
        if pending:
            finished = self.data.draw(
                st.lists(st.sampled_from(pending), unique=True, max_size=1),
                label="finished meanwhile",
            )
            self.end_some(finished, label="in the order")
        rules = self.rules.get(r.campaign_id)
        while True:
            verdict = self.book.evaluate(
                request_id=r.request_id,
                user_id=r.user_id,
                t=r.t,
                rules=rules,
                impressions=self.impressions.get((r.campaign_id, r.user_id)),
            )
            if not isinstance(verdict, Wait):
                break
            self.waits += 1
            still_pending = set(self.pending())
            assert verdict.on and verdict.on <= still_pending
            self.end_some(sorted(verdict.on), label="awaited, ending in the order")
        if isinstance(verdict, Deny):
            self.outcomes[r.request_id] = ("denied", verdict.reason, verdict.detail)
            return
        assert rules is not None
        assert verdict.cost == rules.cost_micros
        waits = 0
        while not isinstance(covered := self.take(rules, r.t), Covered):
            ours = self.pending(rules.campaign_id)
            if ours:  # a reservation released may give its cost back to the lease
                self.end_some(ours, label="short: ending the campaign's reservations")
            elif covered.dry is None:
                # Each wait pools another day's lease at the bank; there are few of them.
                waits += 1
                assert waits <= 2 + len(self.leases[rules.campaign_id].accounts), "stuck"
            else:
                self.outcomes[r.request_id] = ("denied", "budget_exhausted", covered.dry)
                return
        self.book.reserve(
            self.book.reservation_for(r.request_id, rules, r.user_id, r.t, verdict.cost)
        )
        self.outcomes[r.request_id] = ("pending",)

    def run(self, events: Sequence[Event]) -> list[Outcome]:
        for e in events:
            if isinstance(e, Update):
                self.rules[e.rules.campaign_id] = e.rules
            else:
                self.decide(e)
        self.end_some([rid for rid, o in self.outcomes.items() if o == ("pending",)], label="last")
        assert len(self.book) == 0
        return [self.outcomes[r.request_id] for r in requests_of(events)]


def assert_within_caps_and_budgets(
    rules: dict[str, CampaignRules], events: Sequence[Event], outcomes: Sequence[Outcome]
) -> None:
    """Budgets (updates leave them be), and the caps of campaigns never updated."""
    updated = {e.rules.campaign_id for e in events if isinstance(e, Update)}
    requests = requests_of(events)
    served = [r for r, o in zip(requests, outcomes, strict=True) if o[0] == "served"]
    for cid, rule in rules.items():
        ours = [r for r in served if r.campaign_id == cid]
        if rule.lifetime_micros is not None:
            assert len(ours) * rule.cost_micros <= rule.lifetime_micros
        if rule.daily_micros is not None:
            for day in {r.t // MS_PER_DAY for r in ours}:
                today = [r for r in ours if r.t // MS_PER_DAY == day]
                assert len(today) * rule.cost_micros <= rule.daily_micros
        for user in USERS:
            if user is None or not rule.caps or cid in updated:
                continue
            times = [r.t for r in ours if r.user_id == user]
            for cap in rule.caps:
                for end in times:
                    assert in_window(times, end, cap.window_ms) <= cap.max


# Within one hour of event time nothing is ever pruned or late, so the design's rules alone say
# what must happen; the hour straddles a UTC midnight for the daily budgets.
within_the_hour = scenarios(start=MIDNIGHT - 30 * MINUTE, unit=UNIT, units=11, window_unit=UNIT)


@settings(max_examples=300, deadline=None)
@given(within_the_hour, st.data())
def test_the_worker_loop_decides_exactly_like_one_at_a_time(
    scenario: tuple[dict[str, CampaignRules], list[Event]], data: st.DataObject
) -> None:
    rules, events = scenario
    worker = Worker(rules, data)
    outcomes = worker.run(events)
    target(worker.waits)
    assert_agree(outcomes, reference(rules, events, lateness=False))
    assert_within_caps_and_budgets(rules, events, outcomes)
    requests = requests_of(events)
    served = [r for r, o in zip(requests, outcomes, strict=True) if o[0] == "served"]
    for cid in rules:
        charged = sum(
            o[1]
            for r, o in zip(requests, outcomes, strict=True)
            if o[0] == "served" and r.campaign_id == cid
        )
        assert worker.spends.get(cid, Spend()).lifetime == charged
    # Every impression of an identified user is recorded, whatever the caps it was served
    # under, and nothing else.
    identified = {(r.campaign_id, r.user_id) for r in served if r.user_id is not None}
    assert worker.impressions.keys() == identified
    for (cid, user), impressions in worker.impressions.items():
        assert impressions.times == sorted(
            r.t for r in served if (r.campaign_id, r.user_id) == (cid, user)
        )


# Over days of event time, with pruning and late refusals: the same as the sequential rules.
# The history is at least every window, so what is dropped is what no window of a request
# within the allowed lateness can see, whatever the caps did meanwhile.
WINDOW_UNIT = ALLOWED_LATENESS_MS // 2
over_days = scenarios(start=MIDNIGHT, unit=MS_PER_DAY // 8, units=40, window_unit=WINDOW_UNIT)
# Finer: requests half a window unit apart over a day, so that updates find impressions
# inside their new windows that the old caps (or none) would have let go.
over_hours = scenarios(
    start=MIDNIGHT - 12 * HOUR, unit=WINDOW_UNIT // 2, units=48, window_unit=WINDOW_UNIT
)


@settings(max_examples=300, deadline=None)
@given(
    over_days | over_hours,
    st.sampled_from([6 * WINDOW_UNIT, 8 * WINDOW_UNIT, MS_PER_DAY]),
    st.data(),
)
def test_the_worker_loop_matches_sequential_decisions_with_lateness(
    scenario: tuple[dict[str, CampaignRules], list[Event]], history_ms: int, data: st.DataObject
) -> None:
    rules, events = scenario
    worker = Worker(rules, data, history_ms)
    outcomes = worker.run(events)
    target(worker.waits)
    assert_agree(outcomes, reference(rules, events, lateness=True, history_ms=history_ms))
    assert_within_caps_and_budgets(rules, events, outcomes)


@settings(max_examples=200, deadline=None)
@given(over_days | over_hours, st.sampled_from([WINDOW_UNIT, 2 * WINDOW_UNIT]), st.data())
def test_a_history_shorter_than_a_window_still_counts_the_history(
    scenario: tuple[dict[str, CampaignRules], list[Event]], history_ms: int, data: st.DataObject
) -> None:
    """Caps whose windows are longer than the history, added and lengthened mid-stream, in
    event-time order: every window, cut to the history, stays within its cap (what is kept
    counts; the design's whole window may not, documented)."""
    rules, unordered = scenario
    ordered = iter(sorted(requests_of(unordered), key=lambda r: r.t))
    events = [e if isinstance(e, Update) else next(ordered) for e in unordered]
    worker = Worker(rules, data, history_ms)
    outcomes = worker.run(events)
    in_force = dict(rules)
    served: list[Request] = []
    decided = iter(outcomes)
    for e in events:
        if isinstance(e, Update):
            in_force[e.rules.campaign_id] = e.rules
            continue
        if next(decided)[0] != "served":
            continue
        rule = in_force[e.campaign_id]
        if holds_cap_slot(rule, e.user_id):
            mine = [s.t for s in served if (s.campaign_id, s.user_id) == (e.campaign_id, e.user_id)]
            for cap in rule.caps:
                assert in_window(mine, e.t, min(cap.window_ms, history_ms)) < cap.max
        served.append(e)


def _uncapped_then(caps: tuple[Cap, ...], *before: Cap) -> tuple[CampaignRules, Update]:
    first = msgspec.structs.replace(make_rules(caps=()), caps=before)
    return first, Update(msgspec.structs.replace(first, version=8, caps=caps))


@settings(max_examples=20, deadline=None)
@given(st.sampled_from([2 * HOUR, 3 * HOUR, MS_PER_DAY]), st.data())
def test_a_cap_added_later_counts_what_was_served_before_it(
    history_ms: int, data: st.DataObject
) -> None:
    # Served uncapped 90 min apart; then a cap of 2 per 3 h. Kept for the longest window
    # only, the first impression would be gone (older than the newest minus 1 h of lateness)
    # and a third one served.
    rules, update = _uncapped_then((Cap(2, 3 * HOUR),))
    events: list[Event] = [
        Request("r-0", "c-1", "u-1", T0, True),
        Request("r-1", "c-1", "u-1", T0 + 90 * MINUTE, True),
        Request("r-anon", "c-1", None, T0 + 91 * MINUTE, True),
        update,
        Request("r-2", "c-1", "u-1", T0 + 2 * HOUR, True),
        Request("r-3", "c-1", "u-1", T0 + 3 * HOUR, True),
        Request("r-4", "c-1", "u-1", T0 + 3 * HOUR + 1, True),
    ]
    outcomes = Worker({"c-1": rules}, data, history_ms).run(events)
    expected = reference({"c-1": rules}, events, lateness=True, history_ms=history_ms)
    assert_agree(outcomes, expected)
    assert [o[:2] for o in outcomes] == [
        ("served", 2_500),
        ("served", 2_500),
        ("served", 2_500),  # anonymous: uncapped then, and counts for no one
        ("denied", "frequency_cap"),
        ("served", 2_500),  # the first one left the window at exactly 3 h
        ("denied", "frequency_cap"),
    ]


@settings(max_examples=20, deadline=None)
@given(st.data())
def test_a_lengthened_window_counts_what_the_shorter_one_let_go(data: st.DataObject) -> None:
    # 1 per 10 min, then 2 per 6 h: the impressions of hours ago count for the new window.
    rules, update = _uncapped_then((Cap(2, 6 * HOUR),), Cap(1, 600))
    events: list[Event] = [
        Request("r-0", "c-1", "u-1", T0, True),
        Request("r-1", "c-1", "u-1", T0 + 2 * HOUR, True),
        Request("r-other", "c-1", "u-2", T0 + 4 * HOUR, True),
        update,
        Request("r-2", "c-1", "u-1", T0 + 5 * HOUR, True),
        Request("r-3", "c-1", "u-2", T0 + 5 * HOUR, True),
        Request("r-4", "c-1", "u-1", T0 + 6 * HOUR, True),
    ]
    outcomes = Worker({"c-1": rules}, data, 6 * HOUR).run(events)
    assert_agree(outcomes, reference({"c-1": rules}, events, lateness=True, history_ms=6 * HOUR))
    assert [o[0] for o in outcomes] == ["served"] * 3 + ["denied", "served", "served"]


def test_the_order_reservations_end_in_does_not_change_later_decisions() -> None:
    rules = make_rules(caps=((1, 1800),))
    a, b = T0, T0 + 10 * HOUR
    c = b + 31 * MINUTE
    d = b - HOUR
    verdicts = []
    for order in (["b", "c"], ["c", "b"]):
        book = DecisionBook(history_ms=0)
        impressions = Impressions()
        frequency.record(impressions, a, rules.longest_window_ms, frequency.MAX_KEPT_IMPRESSIONS)
        for request_id, t in (("b", b), ("c", c)):
            verdict = evaluate(book, rules, t=t, impressions=impressions, request_id=request_id)
            assert verdict == Reserve(2_500)
            book.reserve(reservation(request_id, rules=rules, t=t))
        for request_id in order:
            frequency.record(
                impressions,
                book.end(request_id).t,
                rules.longest_window_ms,
                frequency.MAX_KEPT_IMPRESSIONS,
            )
        verdicts.append(evaluate(book, rules, t=d, impressions=impressions))
    # One at a time (b, c served, then d): d's windows reach no further back than what b
    # dropped, and hold no impression.
    assert verdicts == [Reserve(2_500), Reserve(2_500)]
