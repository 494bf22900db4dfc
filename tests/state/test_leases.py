"""`streams.state.leases`: a campaign's bank and the leases of the partitions deciding it,
exchanging their events through per-partition FIFO queues with random delays, re-deliveries,
budget changes and several UTC days."""

from __future__ import annotations

import heapq
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.state.leases import (
    LIFETIME,
    Bank,
    BudgetBank,
    Covered,
    Lease,
    LeaseAsk,
    LeaseBook,
    LeaseEvent,
    LeaseGrant,
    LeaseReclaim,
    LeaseReturn,
    Ledger,
    Policy,
    Short,
    Terms,
    ToBank,
    ToPartition,
)
from streams.state.spend import MS_PER_DAY, utc_day

MIDNIGHT = int(datetime(2024, 3, 10, tzinfo=UTC).timestamp() * 1000)
COST = 2_500
CAMPAIGN = "c-1"


def _bound(limit: int | None, floor: int) -> float:
    return float("inf") if limit is None else max(limit, floor)


@dataclass
class World:
    """One bank and `n` partitions; every event sent is kept in order for replays."""

    n: int
    terms: list[Terms]
    book: LeaseBook = field(default_factory=LeaseBook)
    bank_rules: BudgetBank = field(default_factory=BudgetBank)
    bank: Bank = field(default_factory=lambda: Bank(CAMPAIGN))
    leases: dict[int, Lease] = field(default_factory=dict)
    seen: dict[int, int] = field(default_factory=dict)
    """The index in `terms` each partition's rules have reached."""
    bank_seen: int = 0
    clock: dict[int, int] = field(default_factory=dict)
    to_bank: dict[int, deque[ToBank]] = field(default_factory=lambda: defaultdict(deque))
    to_part: dict[int, deque[ToPartition]] = field(default_factory=lambda: defaultdict(deque))
    delivered_to_bank: dict[int, list[ToBank]] = field(default_factory=lambda: defaultdict(list))
    delivered_to_part: dict[int, list[ToPartition]] = field(
        default_factory=lambda: defaultdict(list)
    )
    bank_inputs: list[Terms | ToBank] = field(default_factory=list)
    bank_outputs: list[ToPartition] = field(default_factory=list)
    log: list[LeaseEvent] = field(default_factory=list)
    spent: int = 0
    spent_on: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    floor: int = 0
    floor_on: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))
    """What was out at the bank at its last budget change (lifetime; per day)."""
    denied_dry: int = 0
    taken: dict[int, list[tuple[int, int, int, Terms]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    """Per partition: (event time, cost, what of it a lease covered, the terms taken under)."""

    def __post_init__(self) -> None:
        for p in range(self.n):
            self.leases[p] = Lease(CAMPAIGN, p)
            self.seen[p] = 0
            self.clock[p] = MIDNIGHT + 23 * 3_600_000
        self.configure_bank()

    def rules(self, p: int) -> Terms:
        return self.terms[self.seen[p]]

    def configure_bank(self) -> None:
        terms = self.terms[self.bank_seen]
        self.bank_inputs.append(terms)
        self.emit_to_parts(self.bank_rules.configure(self.bank, terms))
        self.floor = self.bank.out()
        # A lease of the lifetime account may be spent on any day by rules without a daily
        # budget, still in force on a partition.
        undated = self.bank.out(LIFETIME)
        self.floor_on = defaultdict(
            lambda: undated, {d: self.bank.out(d) + undated for d in self.days()}
        )

    def days(self) -> set[int]:
        return {k for h in self.bank.holders.values() for k in h.accounts if k != LIFETIME}

    def emit_to_parts(self, events: list[ToPartition]) -> None:
        self.bank_outputs += events
        for event in events:
            self.to_part[event.partition].append(event)
            self.log.append(event)

    def emit_to_bank(self, events: list[ToBank]) -> None:
        for event in events:
            self.to_bank[event.partition].append(event)
            self.log.append(event)

    def request(self, p: int, dt: int) -> Covered | Short:
        self.clock[p] += dt
        t, terms = self.clock[p], self.rules(p)
        verdict, events = self.book.take(self.leases[p], terms, t)
        self.emit_to_bank(events)
        if isinstance(verdict, Covered):
            # Spent without a budget is no lease's: a budget set later counts from then on.
            leased = verdict.cost if terms.limited else 0
            self.spent += leased
            self.spent_on[utc_day(t)] += leased
            self.taken[p].append((t, verdict.cost, leased, terms))
            self.check_spend(utc_day(t))
        elif verdict.dry is not None:
            self.denied_dry += 1
        return verdict

    def release(self, p: int) -> None:
        """The newest reservation of `p` ends without an ad."""
        if self.taken[p]:
            t, cost, leased, terms = self.taken[p].pop()
            self.spent -= leased
            self.spent_on[utc_day(t)] -= leased
            # As the stage does: given back under the rules the reservation was taken by.
            self.emit_to_bank(self.book.give_back(self.leases[p], terms, t, cost))

    def check_spend(self, day: int) -> None:
        terms = self.terms[self.bank_seen]
        assert self.spent <= _bound(terms.lifetime, self.floor)
        assert self.spent_on[day] <= _bound(terms.daily, self.floor_on[day])

    def deliver_to_bank(self, p: int, again: bool = False) -> None:
        if again and self.delivered_to_bank[p]:
            event = self.delivered_to_bank[p][-1]
        elif self.to_bank[p]:
            event = self.to_bank[p].popleft()
            self.delivered_to_bank[p].append(event)
        else:
            return
        self.bank_inputs.append(event)
        self.emit_to_parts(self.bank_rules.receive(self.bank, event))

    def deliver_to_part(self, p: int, again: bool = False) -> None:
        if again and self.delivered_to_part[p]:
            event = self.delivered_to_part[p][-1]
        elif self.to_part[p]:
            event = self.to_part[p].popleft()
            self.delivered_to_part[p].append(event)
        else:
            return
        self.emit_to_bank(self.book.receive(self.leases[p], event, self.rules(p)))

    def advance_rules(self, p: int | None) -> None:
        """A partition (None: the bank) reads the next campaign record."""
        if p is None:
            if self.bank_seen + 1 < len(self.terms):
                self.bank_seen += 1
                self.configure_bank()
        elif self.seen[p] + 1 < len(self.terms):
            self.seen[p] += 1
            self.emit_to_bank(self.book.tend(self.leases[p], self.rules(p), self.clock[p]))

    def settle(self) -> None:
        """Deliver everything in flight."""
        while any(self.to_bank.values()) or any(self.to_part.values()):
            for p in range(self.n):
                self.deliver_to_bank(p)
                self.deliver_to_part(p)

    def check_leases(self) -> None:
        for lease in self.leases.values():
            for account in lease.accounts.values():
                assert account.available >= 0


terms_st = st.builds(
    Terms,
    version=st.just(0),
    cost=st.sampled_from([COST, 1_000, 7_777]),
    lifetime=st.one_of(st.none(), st.integers(0, 300 * COST)),
    daily=st.one_of(st.none(), st.integers(0, 60 * COST)),
)

step_st = st.one_of(
    st.tuples(st.just("request"), st.integers(0, 3), st.integers(0, 40_000)),
    st.tuples(st.just("to_bank"), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("to_part"), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("release"), st.integers(0, 3), st.just(False)),
    st.tuples(st.just("rules"), st.integers(-1, 3), st.just(False)),
)


def build(n: int, configs: list[Terms]) -> World:
    terms = [msgspec.structs.replace(c, version=10 * i) for i, c in enumerate(configs)]
    return World(n=n, terms=terms)


def run(world: World, steps: list[tuple[str, int, int | bool]]) -> None:
    for kind, p, arg in steps:
        p = p % world.n if p >= 0 else p
        if kind == "request":
            world.request(p, int(arg))
        elif kind == "to_bank":
            world.deliver_to_bank(p, again=bool(arg))
        elif kind == "to_part":
            world.deliver_to_part(p, again=bool(arg))
        elif kind == "release":
            world.release(p)
        else:
            world.advance_rules(None if p < 0 else p)
        world.check_leases()


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 4),
    configs=st.lists(terms_st, min_size=1, max_size=3),
    steps=st.lists(step_st, max_size=400),
    active=st.integers(0, 3),
)
def test_never_overspent_and_spent_down_with_traffic_continuing(
    n: int, configs: list[Terms], steps: list[tuple[str, int, int | bool]], active: int
) -> None:
    world = build(n, configs)
    run(world, steps)
    # Every party reads the newest rules, then traffic continues on one partition only.
    while world.bank_seen + 1 < len(world.terms):
        world.advance_rules(None)
    for p in range(n):
        while world.seen[p] + 1 < len(world.terms):
            world.advance_rules(p)
    world.settle()
    p = active % n
    world.clock[p] = max(world.clock.values()) + 2 * MS_PER_DAY  # a day of its own
    world.clock[p] -= world.clock[p] % MS_PER_DAY - 3_600_000
    terms = world.terms[-1]
    dry_in_a_row = 0
    for _ in range(2_000 if terms.limited else 0):
        verdict = world.request(p, 10)
        world.settle()
        world.check_leases()
        dry_in_a_row = dry_in_a_row + 1 if isinstance(verdict, Short) and verdict.dry else 0
        if dry_in_a_row == 3:
            break
    day = utc_day(world.clock[p])
    left = [
        limit - spent
        for limit, spent in ((terms.lifetime, world.spent), (terms.daily, world.spent_on[day]))
        if limit is not None
    ]
    assert not left or min(left) < terms.cost

    check_ledger(world)
    check_replay(world)


def check_ledger(world: World) -> None:
    """The events, folded with every re-delivery, give what the bank and partitions hold."""
    ledger = Ledger()
    for event in world.log:
        assert ledger.apply(event)
    for events in world.delivered_to_bank.values():
        for event in events:
            assert not ledger.apply(event)  # seen already
    for (_, p, key), held in ledger.accounts.items():
        account = world.leases[p].accounts.get(key)
        if account is not None:
            assert (account.granted, account.returned) == (held.granted, held.returned)
        bank_held = world.bank.holders[p].accounts.get(key)
        if bank_held is not None:
            assert (bank_held.granted, bank_held.returned) == (held.granted, held.returned)
        assert held.spent <= held.granted - held.returned or account is not None


def check_replay(world: World) -> None:
    """The bank's inputs, re-deliveries included, rebuild its state and its events."""
    bank = Bank(CAMPAIGN)
    rules = BudgetBank()
    outputs: list[ToPartition] = []
    for item in world.bank_inputs:
        if isinstance(item, Terms):
            outputs += rules.configure(bank, item)
        else:
            outputs += rules.receive(bank, item)
    assert msgspec.msgpack.encode(bank) == msgspec.msgpack.encode(world.bank)
    assert outputs == world.bank_outputs


@settings(max_examples=100, deadline=None)
@given(
    periods=st.lists(st.integers(5, 400), min_size=1, max_size=4),
    delay=st.integers(0, 900),
    daily=st.booleans(),
)
def test_steady_traffic_never_waits_on_a_bank_with_money(
    periods: list[int], delay: int, daily: bool
) -> None:
    """Requests at a steady rate per partition, every event arriving `delay` ms of event
    time after it was sent (well within the low-water mark), across a UTC midnight: once a
    partition has measured its rate (the low-water span after its first lease), every
    request is covered."""
    policy = Policy()
    book, rules = LeaseBook(policy), BudgetBank(policy)
    terms = Terms(0, COST, 10**15, 10**14 if daily else None)
    bank = Bank(CAMPAIGN)
    rules.configure(bank, terms)
    leases = {p: Lease(CAMPAIGN, p) for p in range(len(periods))}
    start = MIDNIGHT - 40_000
    queue: list[tuple[int, int, int, str, LeaseEvent | None]] = []
    order = 0

    def send(at: int, kind: str, p: int, event: LeaseEvent | None) -> None:
        nonlocal order
        order += 1
        heapq.heappush(queue, (at, order, p, kind, event))

    for p in range(len(periods)):
        send(start + p, "request", p, None)
    first_covered: dict[int, int] = {}
    while queue:
        t, _, p, kind, event = heapq.heappop(queue)
        if t > MIDNIGHT + 40_000:
            break
        if kind == "request":
            verdict, asks = book.take(leases[p], terms, t)
            if t >= first_covered.get(p, t) + policy.low_water_ms:
                assert isinstance(verdict, Covered), (p, t - MIDNIGHT, verdict)
            if isinstance(verdict, Covered):
                first_covered.setdefault(p, t)
            for ask in asks:
                send(t + delay, "to_bank", p, ask)
            send(t + periods[p], "request", p, None)
        elif isinstance(event, LeaseAsk | LeaseReturn):
            for answer in rules.receive(bank, event):
                send(t + delay, "to_part", answer.partition, answer)
        elif event is not None:
            for report in book.receive(leases[p], event, terms):
                send(t + delay, "to_bank", p, report)
    assert set(first_covered) == set(range(len(periods)))


def test_a_short_partition_pools_its_leftover_and_the_idle_one_is_reclaimed() -> None:
    book, rules = LeaseBook(), BudgetBank()
    terms = Terms(0, COST, 10 * COST + COST // 2, None)
    bank = Bank(CAMPAIGN)
    rules.configure(bank, terms)
    a, b = Lease(CAMPAIGN, 0), Lease(CAMPAIGN, 1)
    t = MIDNIGHT

    def exchange(lease: Lease, to_bank: list[ToBank]) -> None:
        while to_bank:
            replies: list[ToPartition] = []
            for event in to_bank:
                replies += rules.receive(bank, event)
            to_bank = []
            for reply in replies:
                target = a if reply.partition == 0 else b
                to_bank += book.receive(target, reply, terms)

    verdict, asks = book.take(a, terms, t)
    assert verdict == Short(None)  # the first request: the ask is on its way
    exchange(a, asks)
    verdict, asks = book.take(b, terms, t)
    exchange(b, asks)
    assert a.accounts[LIFETIME].available + b.accounts[LIFETIME].available == terms.lifetime
    served = 0
    for i in range(100):
        verdict, events = book.take(a, terms, t + i)
        exchange(a, events)
        served += isinstance(verdict, Covered)
    assert served == 10  # b's share came back to a; the half impression left is nobody's
    assert b.accounts[LIFETIME].available == 0
    assert verdict == Short("lifetime")


def test_a_lower_budget_is_counted_against_what_is_out_and_reclaims_it() -> None:
    book, rules = LeaseBook(), BudgetBank()
    high = Terms(0, COST, 100 * COST, None)
    low = Terms(10, COST, 5 * COST, None)
    bank = Bank(CAMPAIGN)
    rules.configure(bank, high)
    lease = Lease(CAMPAIGN, 0)
    _, asks = book.take(lease, high, MIDNIGHT)
    (grant,) = rules.receive(bank, asks[0])
    assert isinstance(grant, LeaseGrant)
    assert grant.amount >= 8 * COST
    book.receive(lease, grant, high)
    (reclaim,) = rules.configure(bank, low)
    assert isinstance(reclaim, LeaseReclaim)
    # Before the reclaim arrives, the partition reads the lower budget: what it holds was
    # granted under a budget its rules no longer name, so it goes back unspent.
    verdict, events = book.take(lease, low, MIDNIGHT + 1)
    assert isinstance(verdict, Short)
    assert lease.accounts[LIFETIME].available == 0
    grants = [g for event in events for g in rules.receive(bank, event)]
    # Nothing was spent: once returned, all of the lower budget is granted, under it.
    assert [(g.amount, g.lifetime_limit) for g in grants if isinstance(g, LeaseGrant)] == [
        (5 * COST, low.lifetime)
    ]
    assert bank.out() == 5 * COST
    for grant in grants:
        book.receive(lease, grant, low)
    book.receive(lease, reclaim, low)  # re-delivered late: already applied seqs skip
    assert bank.out() <= 5 * COST
