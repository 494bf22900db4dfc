"""Budgets as leases, pure: a campaign's bank hands each deciding partition a share of its budget.

A request is decided on its user's partition, so one campaign's requests are decided on many
partitions at once. None of them may wait on another, and together they must never spend
more than a budget. So the campaign's *bank* (one place per campaign) grants each partition
a *lease*: an amount in integer micros, for the lifetime budget or, when the campaign has a
daily budget, for one UTC day of event time (a day's amount counts against both budgets). A
decision spends only its own partition's lease.

Every grant keeps what the bank has out (granted minus returned, spent or not) within the
budget in force at the bank; a partition spends only what it holds, and only from grants
made under the budget its own rules name. So spend never exceeds a budget, whatever the
delays: in flight, a grant is out already and a return still counts as out.

The bank and the partitions talk through events (`LeaseAsk`, `LeaseReturn` to the bank;
`LeaseGrant`, `LeaseReclaim` to a partition). Each names campaign, partition, account (UTC day,
or None for the lifetime) and carries the account's running totals, plus a sequence number
per (campaign, partition) and direction: a receiver applies an event only if its number is
newer than the last it applied, so re-deliveries change nothing, and the totals make every
event self-contained for an audit (`Ledger`).

Refills come before they are needed: a partition asks once its lease covers less than
`Policy.low_water_ms` of its recent spend rate, measured in event time. When the bank cannot
fill an ask it reclaims what idles: from partitions whose event time lags the campaign's by
`Policy.idle_ms`, and, once a partition cannot cover one impression, from every other
partition. A partition that cannot cover one impression returns what it holds, so the money
pools at the bank and goes to one partition that can spend it: with traffic continuing, a
campaign spends down to less than one impression's cost. A day's lease is returned once the
partition's event time passes the day's end by `Policy.day_grace_ms`; the next day's is asked
for `Policy.day_lead_ms` before midnight.

A budget changing at the bank counts what is out against the new budget, so a lower budget
grants nothing until returns bring what is out within it; the bank reclaims every lease on
a change, and a partition returns a lease granted under a budget its newer rules no longer
name.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from models.leases import (
    LeaseAskRecord,
    LeaseGrantRecord,
    LeaseReclaimRecord,
    LeaseRecord,
    LeaseReturnRecord,
)
from models.money import from_micros, to_micros
from streams.state.campaigns import CampaignRules
from streams.state.spend import DAYS_KEPT, MS_PER_DAY, Spend, utc_day

LIFETIME = -1
"""The account of a campaign without a daily budget (others have one per UTC day)."""


RATE_SPAN_MIN_MS = 100
"""A rate is measured over this much event time at least: a first burst of requests
overstates it (and asks for more), never understates it."""


class Policy(msgspec.Struct, frozen=True):
    """How leases are sized and when they move; every span is event time in ms."""

    low_water_ms: int = 2_000
    """A partition asks for more once its lease covers less than this much of its spend."""
    target_ms: int = 10_000
    """A refill tops a lease up to this much of its spend; also the rate's window."""
    min_impressions: int = 4
    """The least a partition keeps ahead, whatever its rate (in impressions)."""
    idle_ms: int = 60_000
    """A partition whose event time lags the campaign's this much is idle: reclaimed first."""
    day_lead_ms: int = 60_000
    """Tomorrow's lease is asked for this long before midnight."""
    day_grace_ms: int = (DAYS_KEPT - 1) * MS_PER_DAY
    """A day's lease is kept this long after the day ends, for late requests, then returned:
    as long as spend keeps the day (`streams.state.spend.DAYS_KEPT`). A bank that runs dry
    reclaims it sooner."""


class Terms(msgspec.Struct, frozen=True):
    """What the lease rules need of a campaign's rules."""

    version: int
    """Offset of the `campaigns` record (`CampaignRules.version`)."""
    cost: int
    lifetime: int | None
    daily: int | None

    @classmethod
    def of(cls, rules: CampaignRules) -> Terms:
        return cls(rules.version, rules.cost_micros, rules.lifetime_micros, rules.daily_micros)

    @property
    def limited(self) -> bool:
        return self.lifetime is not None or self.daily is not None

    def account(self, t: int) -> int:
        """The account a request at event time `t` spends from."""
        return LIFETIME if self.daily is None else utc_day(t)


def _lower(new: int | None, old: int | None) -> bool:
    """Whether limit `new` allows less than `old` (None: no limit)."""
    return new is not None and (old is None or new < old)


def _day(key: int) -> int | None:
    return None if key == LIFETIME else key


def _key(day: int | None) -> int:
    return LIFETIME if day is None else day


# --- events -------------------------------------------------------------------------------


class LeaseAsk(msgspec.Struct, frozen=True, tag="ask"):
    """A partition asks for `want` more micros of an account."""

    campaign_id: str
    partition: int
    seq: int
    day: int | None
    want: int
    spent: int
    """The account's total spent on the partition (released reservations given back)."""
    watermark: int
    """The partition's newest event time of the campaign."""


class LeaseReturn(msgspec.Struct, frozen=True, tag="return"):
    """A partition gives back `amount` unspent micros of an account (0: a report only)."""

    campaign_id: str
    partition: int
    seq: int
    day: int | None
    amount: int
    returned: int
    """The account's total returned, this one included."""
    spent: int
    watermark: int
    closes: bool = True
    """The partition asks no more of the account (the bank forgets an ask it could not fill);
    False when it gives back too little to spend while it keeps asking."""


class LeaseGrant(msgspec.Struct, frozen=True, tag="grant"):
    """The bank grants `amount` micros of an account to a partition (0: an answer only)."""

    campaign_id: str
    partition: int
    seq: int
    day: int | None
    amount: int
    granted: int
    """The account's total granted to the partition, this one included."""
    version: int
    lifetime_limit: int | None
    daily_limit: int | None
    """The budget in force at the bank when it granted (and its `version`)."""
    answers: int
    """The seq of the partition's ask this answers."""
    dry: str | None
    """`lifetime` or `daily` when the partition still cannot cover one impression: the bank
    had no more to grant; None when it can."""


class LeaseReclaim(msgspec.Struct, frozen=True, tag="reclaim"):
    """The bank asks a partition to return what it holds unspent (its budget changed or
    it runs low); the partition answers with a `LeaseReturn` per account."""

    campaign_id: str
    partition: int
    seq: int
    version: int


ToBank = LeaseAsk | LeaseReturn
ToPartition = LeaseGrant | LeaseReclaim
LeaseEvent = ToBank | ToPartition

_RECORDS: dict[type[LeaseEvent], type[LeaseRecord]] = {
    LeaseAsk: LeaseAskRecord,
    LeaseReturn: LeaseReturnRecord,
    LeaseGrant: LeaseGrantRecord,
    LeaseReclaim: LeaseReclaimRecord,
}
_EVENTS: dict[type[LeaseRecord], type[LeaseEvent]] = {v: k for k, v in _RECORDS.items()}
_MONEY = frozenset(
    {"want", "spent", "amount", "returned", "granted", "lifetime_limit", "daily_limit"}
)


def to_record(event: LeaseEvent) -> LeaseRecord:
    """The event as it travels on `budget-leases`: money as decimal strings."""
    fields = msgspec.structs.asdict(event)
    for name in _MONEY & fields.keys():
        if fields[name] is not None:
            fields[name] = from_micros(fields[name])
    return _RECORDS[type(event)](**fields)


def from_record(record: LeaseRecord) -> LeaseEvent:
    """The event of a `budget-leases` record (raises `MoneyError` on a malformed amount)."""
    fields = msgspec.structs.asdict(record)
    del fields["schema"]
    for name in _MONEY & fields.keys():
        if fields[name] is not None:
            fields[name] = to_micros(fields[name])
    return _EVENTS[type(record)](**fields)


# --- the partition's side -----------------------------------------------------------------


class Account(msgspec.Struct):
    """One account of a partition's lease: totals in micros."""

    granted: int = 0
    spent: int = 0
    returned: int = 0
    version: int = -1
    lifetime_limit: int | None = None
    daily_limit: int | None = None
    """The budget the grants held were made under (and the bank's `version` then)."""
    asked: int = 0
    answered: int = 0
    """Seqs of the newest ask and of the newest ask answered."""
    dry: str | None = None
    """The bank's last answer left this account short (`LeaseGrant.dry`)."""
    refused: bool = False
    """The bank's last answer granted nothing: ask again only once short."""

    @property
    def available(self) -> int:
        return self.granted - self.spent - self.returned

    @property
    def asking(self) -> bool:
        return self.asked > self.answered

    def fits(self, terms: Terms) -> bool:
        return (self.lifetime_limit, self.daily_limit) == (terms.lifetime, terms.daily)


class Lease(msgspec.Struct):
    """One campaign's lease on one partition."""

    campaign_id: str
    partition: int
    accounts: dict[int, Account] = msgspec.field(default_factory=dict)
    seq_in: int = 0
    """The bank's newest event applied."""
    seq_out: int = 0
    """This partition's newest event sent."""
    bank_version: int = -1
    """The newest `version` the bank named."""
    asks_from: int = -1
    """No ask until the bank names this version: a grant under a budget these rules no
    longer name was returned, and the bank has not caught up with the rules yet."""
    watermark: int = 0
    closed_before: int = 0
    """Days before this are closed: their leases returned, their late requests refused."""
    settled: int = 0
    """What was spent in day accounts dropped since (it counts for the lifetime)."""
    unleased: int = 0
    """What was spent while the campaign had no budget: no lease covers it, and a budget
    set later counts from the moment it is in force."""
    rate_since: int = 0
    rate_start: int = 0
    rate_previous: int = 0
    rate_current: int = 0
    """Impressions spent in the window starting at `rate_start` and in the one before it,
    which started at `rate_since`."""

    def spend(self) -> Spend:
        """What this partition spent of the campaign: lifetime, and per UTC day kept."""
        days = {key: a.spent for key, a in self.accounts.items() if key != LIFETIME}
        lifetime = self.settled + self.unleased + sum(a.spent for a in self.accounts.values())
        return Spend(lifetime, days, min(days, default=0))


@dataclass(frozen=True, slots=True)
class Covered:
    """Spent from the partition's lease."""

    cost: int


@dataclass(frozen=True, slots=True)
class Short:
    """The lease cannot cover the request. `dry`: the bank had nothing more to grant when it
    last answered (deny `budget_exhausted` with it as detail); None: an ask or the rules are
    on their way (the stage may wait for them)."""

    dry: str | None


LeaseVerdict = Covered | Short


class LeaseBook:
    """The lease rules of a deciding partition; the state lives in each `Lease`."""

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy or Policy()

    def take(self, lease: Lease, terms: Terms, t: int) -> tuple[LeaseVerdict, list[ToBank]]:
        """Spend one impression at event time `t` from the lease, if it covers it."""
        if not terms.limited:  # no budget to exceed
            lease.unleased += terms.cost
            return Covered(terms.cost), []
        events = self.tend(lease, terms, t)
        key = terms.account(t)
        if key != LIFETIME and key < lease.closed_before:
            return Short("daily (late)"), events
        if terms.cost == 0:  # free impressions fit any budget
            return Covered(0), events
        account = lease.accounts.setdefault(key, Account())
        lease.rate_current += 1  # demand, covered or not: a short lease must not shrink it
        if account.fits(terms) and account.available >= terms.cost:
            account.spent += terms.cost
            events += self._refill(lease, terms, key, low=self._low(lease))
            return Covered(terms.cost), events
        if account.fits(terms) and account.available > 0:
            # Pooled at the bank, where it can serve; the ask stands.
            events.append(self._return(lease, key, closes=False))
        pooled = False
        if terms.lifetime is not None:
            # What other days' leases hold counts against the lifetime budget at the bank:
            # back there, it may come back as today's (the bank's answer is on its way).
            for other, held in lease.accounts.items():
                if other not in (key, LIFETIME) and held.available > 0:
                    events.append(self._return(lease, other))
                    pooled = True
        events += self._refill(lease, terms, key, low=1)
        dry = account.dry if account.fits(terms) and not account.asking and not pooled else None
        return Short(dry), events

    def give_back(self, lease: Lease, terms: Terms, t: int, cost: int) -> list[ToBank]:
        """A reservation taken at `t` ended without an ad: its cost is the lease's again."""
        if not terms.limited or terms.cost == 0:
            lease.unleased -= cost
            return []
        key = terms.account(t)
        account = lease.accounts.get(key)
        if account is None:
            return []
        account.spent -= cost
        if key != LIFETIME and key < lease.closed_before:
            return [self._return(lease, key)]
        return []

    def tend(self, lease: Lease, terms: Terms, t: int) -> list[ToBank]:
        """What event time reaching `t` under `terms` asks of the lease: return the leases of
        closed days and those granted under another budget, ask for tomorrow's."""
        self._observe(lease, t)
        events: list[ToBank] = []
        if terms.daily is not None:
            lease.closed_before = max(
                lease.closed_before, utc_day(lease.watermark - self.policy.day_grace_ms)
            )
        for key, account in list(lease.accounts.items()):
            closed = key != LIFETIME and key < lease.closed_before
            stale = self._stale(account, terms) or (key == LIFETIME) != (terms.daily is None)
            if (closed or stale) and account.available > 0:
                events.append(self._return(lease, key))
            if LIFETIME < key < lease.closed_before - DAYS_KEPT and account.available == 0:
                lease.settled += account.spent
                del lease.accounts[key]
        if terms.daily is not None and self._rate(lease, self.policy.day_lead_ms) > 0:
            tomorrow = utc_day(lease.watermark) + 1
            if lease.watermark >= tomorrow * MS_PER_DAY - self.policy.day_lead_ms:
                events += self._refill(lease, terms, tomorrow, low=self._low(lease))
        return events

    def receive(self, lease: Lease, event: ToPartition, terms: Terms) -> list[ToBank]:
        """Apply an event from the bank (once: a re-delivered one changes nothing)."""
        if event.seq <= lease.seq_in:
            return []
        lease.seq_in = event.seq
        lease.bank_version = max(lease.bank_version, event.version)
        if isinstance(event, LeaseReclaim):
            for account in lease.accounts.values():
                account.answered = account.asked
                account.dry = None
                account.refused = False
            # Every reclaim is answered, if only by a report, so the bank knows it is over.
            keys = list(lease.accounts) or [LIFETIME]
            lease.accounts.setdefault(keys[0], Account())
            return [self._return(lease, key) for key in keys]
        key = _key(event.day)
        account = lease.accounts.setdefault(key, Account())
        # Whatever was held before counts at the bank under its budget now, so all of it
        # goes by the newest grant's budget.
        account.granted = event.granted
        account.version = event.version
        account.lifetime_limit, account.daily_limit = event.lifetime_limit, event.daily_limit
        account.answered = max(account.answered, event.answers)
        account.dry = event.dry
        account.refused = event.amount == 0
        closed = key != LIFETIME and key < lease.closed_before
        if (closed or self._stale(account, terms)) and account.available > 0:
            if not closed:
                lease.asks_from = terms.version
            return [self._return(lease, key)]
        return []

    def _stale(self, account: Account, terms: Terms) -> bool:
        """Granted under a budget that rules older than `terms` named (a newer grant is
        held: these rules are behind the bank's and will catch up)."""
        return not account.fits(terms) and account.version <= terms.version

    def _refill(self, lease: Lease, terms: Terms, key: int, *, low: int) -> list[ToBank]:
        """An ask when the account covers fewer than `low` impressions and none is pending."""
        account = lease.accounts.setdefault(key, Account())
        held = account.available if account.fits(terms) else 0
        if account.asking or account.dry or lease.bank_version < lease.asks_from:
            return []
        if account.refused and low > 1:
            return []
        if held >= low * terms.cost:
            return []
        target = max(2 * self.policy.min_impressions, self._rate(lease, self.policy.target_ms))
        want = max(target, low) * terms.cost - held
        lease.seq_out += 1
        account.asked = lease.seq_out
        ask = LeaseAsk(
            lease.campaign_id,
            lease.partition,
            lease.seq_out,
            _day(key),
            want,
            account.spent,
            lease.watermark,
        )
        return [ask]

    def _return(self, lease: Lease, key: int, *, closes: bool = True) -> LeaseReturn:
        account = lease.accounts[key]
        amount = account.available
        account.returned += amount
        if closes:
            # The bank forgets this account's ask: what it last said of it is stale too.
            account.answered = account.asked
            account.dry = None
            account.refused = False
        lease.seq_out += 1
        return LeaseReturn(
            lease.campaign_id,
            lease.partition,
            lease.seq_out,
            _day(key),
            amount,
            account.returned,
            account.spent,
            lease.watermark,
            closes,
        )

    def _observe(self, lease: Lease, t: int) -> None:
        """Advance the watermark and the rate's windows to event time `t`."""
        window = self.policy.target_ms
        if lease.watermark == 0:
            lease.rate_since = lease.rate_start = t
        lease.watermark = max(lease.watermark, t)
        elapsed = lease.watermark - lease.rate_start
        if elapsed >= 2 * window:  # nothing recent: start afresh
            lease.rate_since, lease.rate_previous = lease.watermark, 0
        elif elapsed >= window:
            lease.rate_since, lease.rate_previous = lease.rate_start, lease.rate_current
        if elapsed >= window:
            lease.rate_current = 0
            lease.rate_start = lease.watermark

    def _rate(self, lease: Lease, span_ms: int) -> int:
        """Impressions the recent rate spends in `span_ms` of event time, rounded up."""
        spent = lease.rate_previous + lease.rate_current
        measured = max(RATE_SPAN_MIN_MS, lease.watermark - lease.rate_since)
        return -(-spent * span_ms // measured)

    def _low(self, lease: Lease) -> int:
        """The impressions a lease keeps ahead: below them it asks for a refill."""
        return max(self.policy.min_impressions, self._rate(lease, self.policy.low_water_ms))


# --- the bank's side ----------------------------------------------------------------------


class Held(msgspec.Struct):
    """One account of one partition's lease, as the bank knows it."""

    granted: int = 0
    returned: int = 0
    spent: int = 0
    """As last reported: the partition may have spent more since."""

    @property
    def out(self) -> int:
        """What counts against the budget: granted and not returned, spent or not."""
        return self.granted - self.returned

    @property
    def unspent(self) -> int:
        return self.granted - self.returned - self.spent


class Waiter(msgspec.Struct):
    """An ask the bank could not fill: the partition cannot cover one impression."""

    want: int
    ask: int
    """The seq of the ask."""
    ticket: int
    """Waiters are served in the order they came."""
    deferred: bool = False
    """Not answered yet: other partitions' returns may still fill it."""


class Holder(msgspec.Struct):
    """One partition that decides the campaign, as the bank knows it."""

    accounts: dict[int, Held] = msgspec.field(default_factory=dict)
    waiting: dict[int, Waiter] = msgspec.field(default_factory=dict)
    seq_in: int = 0
    seq_out: int = 0
    watermark: int = 0
    reclaiming: bool = False
    """A reclaim was sent and no report came since."""


class Bank(msgspec.Struct):
    """One campaign's budget bank."""

    campaign_id: str
    terms: Terms | None = None
    holders: dict[int, Holder] = msgspec.field(default_factory=dict)
    settled: int = 0
    """What was out in day accounts dropped since (spent: it counts against the lifetime)."""
    watermark: int = 0
    tickets: int = 0

    def out(self, key: int | None = None) -> int:
        """What is out in all accounts (None) or in one."""
        if key is None:
            held = (a.out for h in self.holders.values() for a in h.accounts.values())
            return self.settled + sum(held)
        return sum(h.accounts[key].out for h in self.holders.values() if key in h.accounts)


class BudgetBank:
    """The rules of a campaign's bank; the state lives in each `Bank`."""

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy or Policy()

    def configure(self, bank: Bank, terms: Terms) -> list[ToPartition]:
        """Apply the campaign's rules of a new version. Any change of budget reclaims every
        lease: what is out counts against the new budget, and the partitions learn of it."""
        old = bank.terms
        bank.terms = terms
        if old is None or (old.lifetime, old.daily) == (terms.lifetime, terms.daily):
            return self._serve_waiters(bank)
        events = [self._reclaim(bank, p) for p in bank.holders]
        return events + self._serve_waiters(bank)

    def receive(self, bank: Bank, event: ToBank) -> list[ToPartition]:
        """Apply an event from a partition (once: a re-delivered one changes nothing)."""
        holder = bank.holders.setdefault(event.partition, Holder())
        if event.seq <= holder.seq_in:
            return []
        holder.seq_in = event.seq
        holder.reclaiming = False
        holder.watermark = max(holder.watermark, event.watermark)
        bank.watermark = max(bank.watermark, event.watermark)
        key = _key(event.day)
        held = holder.accounts.setdefault(key, Held())
        held.spent = event.spent
        if isinstance(event, LeaseReturn):
            held.returned = event.returned
            if event.closes:
                holder.waiting.pop(key, None)
            # Too little to spend, it stays at the bank for another partition: handed straight
            # back it would bounce between the two with every request.
            skip = None if event.closes else (event.partition, key)
            events = self._serve_waiters(bank, skip=skip)
            self._drop_old_days(bank)
            return events
        bank.tickets += 1
        holder.waiting[key] = Waiter(event.want, event.seq, bank.tickets)
        return self._serve(bank, event.partition, key)

    def _free(self, bank: Bank, key: int) -> tuple[int, str] | None:
        """What the bank can grant of an account and which budget bounds it; None when the
        account is not one of this budget's (the bank's rules differ from the partition's)."""
        terms = bank.terms
        if terms is None or not terms.limited or (key == LIFETIME) != (terms.daily is None):
            return None
        free: list[tuple[int, str]] = []
        if terms.lifetime is not None:
            free.append((terms.lifetime - bank.out(), "lifetime"))
        if terms.daily is not None:
            free.append((terms.daily - bank.out(key), "daily"))
        return min(free)

    def _serve(
        self, bank: Bank, partition: int, key: int, *, answer: bool = True
    ) -> list[ToPartition]:
        """Grant what it can of a waiting ask (an empty grant only to `answer` it); reclaim
        if that leaves the ask unfilled. An ask still short of one impression while other
        partitions hold unspent money is answered once their returns are in: only then is
        the bank dry."""
        free = self._free(bank, key)
        if free is None:
            return []  # answered once the bank has the partition's rules (`configure`)
        assert bank.terms is not None
        holder = bank.holders[partition]
        waiter = holder.waiting[key]
        held = holder.accounts[key]
        amount = max(0, min(waiter.want, free[0]))
        short = held.unspent + amount < bank.terms.cost
        events: list[ToPartition] = []
        if short or amount < waiter.want:
            # Short of one impression: all that is held elsewhere; else what idles.
            idle_before = bank.watermark - self.policy.idle_ms
            for p, other in bank.holders.items():
                idle = short or other.watermark <= idle_before
                if p != partition and idle and self._unspent(other) and not other.reclaiming:
                    events.append(self._reclaim(bank, p))
        later = short and self._elsewhere(bank, partition)
        dry = free[1] if short and not later else None
        if short:
            waiter.want -= amount
            waiter.deferred = later
        else:
            del holder.waiting[key]
        if amount or (answer and not later):
            held.granted += amount
            holder.seq_out += 1
            grant = LeaseGrant(
                bank.campaign_id,
                partition,
                holder.seq_out,
                _day(key),
                amount,
                held.granted,
                bank.terms.version,
                bank.terms.lifetime,
                bank.terms.daily,
                waiter.ask,
                dry,
            )
            events.insert(0, grant)
        return events

    @staticmethod
    def _unspent(holder: Holder) -> bool:
        return any(a.unspent > 0 for a in holder.accounts.values())

    def _elsewhere(self, bank: Bank, partition: int) -> bool:
        """Whether partitions but this one may still return money (reclaimed, unanswered)."""
        return any(
            p != partition and (other.reclaiming or self._unspent(other))
            for p, other in bank.holders.items()
        )

    def _serve_waiters(self, bank: Bank, skip: tuple[int, int] | None = None) -> list[ToPartition]:
        """Grant what came back to the partitions waiting, oldest ask first (but `skip`'s,
        a (partition, account)); answer those whose answer waited on returns once none is
        to come."""
        waiting = sorted(
            (w.ticket, p, key)
            for p, h in bank.holders.items()
            for key, w in h.waiting.items()
            if (p, key) != skip
        )
        events: list[ToPartition] = []
        for _, partition, key in waiting:
            waiter = bank.holders[partition].waiting.get(key)
            free = self._free(bank, key)
            if waiter is None or free is None:
                continue
            if free[0] > 0 or waiter.deferred:
                # A waiter already answered short hears only of money; one not answered yet
                # is, once no partition may return more, and meanwhile every partition the
                # bank believes holds money is asked for it (spend reports lag, so one
                # reclaimed before may hold more by now).
                events += self._serve(bank, partition, key, answer=waiter.deferred)
        return events

    def _reclaim(self, bank: Bank, partition: int) -> LeaseReclaim:
        holder = bank.holders[partition]
        holder.seq_out += 1
        holder.reclaiming = True
        # The partition answers anew: its asks wait on the answer to the reclaim.
        holder.waiting.clear()
        version = -1 if bank.terms is None else bank.terms.version
        return LeaseReclaim(bank.campaign_id, partition, holder.seq_out, version)

    def _drop_old_days(self, bank: Bank) -> None:
        """Fold settled accounts of days no late request reaches into `settled`."""
        oldest = utc_day(bank.watermark) - DAYS_KEPT + 1
        for holder in bank.holders.values():
            for key in [k for k, a in holder.accounts.items() if LIFETIME < k < oldest]:
                held = holder.accounts[key]
                if held.unspent == 0 and key not in holder.waiting:
                    bank.settled += held.out
                    del holder.accounts[key]


# --- the audit's side ---------------------------------------------------------------------


class Ledger:
    """The lease events folded into each account's totals, as an audit replays them: in any
    order across partitions, in order within each (campaign, partition) and direction,
    re-deliveries included."""

    def __init__(self) -> None:
        self.accounts: dict[tuple[str, int, int], Held] = {}
        self._seqs: dict[tuple[str, int, bool], int] = {}

    def apply(self, event: LeaseEvent) -> bool:
        """Fold one event in; False when it was seen already."""
        to_bank = isinstance(event, LeaseAsk | LeaseReturn)
        stream = (event.campaign_id, event.partition, to_bank)
        if event.seq <= self._seqs.get(stream, 0):
            return False
        self._seqs[stream] = event.seq
        if isinstance(event, LeaseReclaim):
            return True
        held = self.accounts.setdefault(
            (event.campaign_id, event.partition, _key(event.day)), Held()
        )
        if isinstance(event, LeaseGrant):
            if event.granted != held.granted + event.amount:
                raise ValueError(f"grant {event.seq} of partition {event.partition}: gap")
            held.granted = event.granted
            return True
        if isinstance(event, LeaseReturn):
            if event.returned != held.returned + event.amount:
                raise ValueError(f"return {event.seq} of partition {event.partition}: gap")
            held.returned = event.returned
        held.spent = event.spent
        return True
