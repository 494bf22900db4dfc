"""The budget leases audited: every served decision against the lease of its partition, every
lease against the budget (docs/design.md, "Budgets as leases").

`LeaseHistory` folds `budget-leases` with the lease rules' own `Ledger` (which applies each
event once and refuses a running total with a gap) and keeps, per account of a lease
(campaign, deciding partition, UTC day or the lifetime), the grants made to it and the
reports (asks, returns) it sent. The checks use only what the records prove about order:

- each (campaign, partition) stream is in order: grants in the bank's `seq`, reports in the
  partition's;
- a grant answers an ask (`answers`), so a report numbered at or before that ask was sent
  before the grant existed: what a partition spent and returned by report `s` is covered by
  the grants answering its asks before `s` (`spent + returned <= granted`);
- a return gives back all the lease holds, so `spent + returned` after it is exactly what the
  partition had been granted then: it tells which grants it had applied;
- every grant keeps what the bank has out (granted minus returned, over all partitions; per
  day for a daily budget) within the budget it names, and between grants what is out only
  shrinks; the bank's budget version never goes back.

So (a) the served costs decided on a partition never exceed what it was granted minus what
it returned, and no report claims more; (b) a grant never leaves more out than its budget,
counting what the partition it went to still held, and at the end of the history what is
out over all partitions is within the budget of the newest grant. A grant names a
configuration (`version`) whose budget it must carry. Across partitions the records prove
no order, so a grant is not held to what other partitions held at that moment: the final
state is.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Mapping
from itertools import accumulate
from typing import Literal

import msgspec

from models.codec import InvalidEvent, decode_lease_record
from models.money import MoneyError, from_micros
from streams.audit.findings import Record
from streams.invariants import utc
from streams.state.leases import (
    LIFETIME,
    Held,
    LeaseAsk,
    LeaseGrant,
    LeaseReclaim,
    LeaseReturn,
    Ledger,
    Terms,
    from_record,
)
from streams.state.spend import MS_PER_DAY

AccountKey = tuple[str, int, int]
"""(campaign_id, deciding partition, UTC day or `LIFETIME`)."""

Budgets = Mapping[tuple[str, int], Terms]
"""(campaign_id, version) -> the lease rules' terms of that configuration."""

LeaseKind = Literal["lease_overspent", "lease_overgranted", "lease_invalid"]


class LeaseBreach(msgspec.Struct, frozen=True):
    kind: LeaseKind
    request_id: str | None
    """The served decision that went past its lease; None for a lease record's breach."""
    detail: str
    timestamp: int
    """Event time of the decision or the lease record (what a window selects by)."""


class _Grant(msgspec.Struct, frozen=True):
    seq: int
    answers: int
    amount: int
    granted: int
    version: int
    lifetime_limit: int | None
    daily_limit: int | None
    timestamp: int


class _Report(msgspec.Struct, frozen=True):
    seq: int
    spent: int
    returned: int
    """The account's total returned as of this report."""
    is_return: bool
    timestamp: int


class Served(msgspec.Struct, frozen=True):
    """A served decision placed on the lease it spent from."""

    request_id: str
    account: AccountKey
    offset: int
    """Of its request on `ad-requests`: the partition decides in this order."""
    cost: int
    timestamp: int


def placed(
    request_id: str, campaign_id: str, partition: int, offset: int, cost: int, t: int, terms: Terms
) -> Served | None:
    """A served decision on the lease it spent from: its request's partition, the account
    its configuration's budget names; None when no budget bounds it or it was free."""
    if not terms.limited or cost == 0:
        return None
    return Served(request_id, (campaign_id, partition, terms.account(t)), offset, cost, t)


def account_name(key: AccountKey) -> str:
    campaign_id, partition, account = key
    day = "lifetime" if account == LIFETIME else _day(account)
    return f"{campaign_id} on partition {partition} ({day})"


def _day(day: int) -> str:
    return utc(day * MS_PER_DAY)[:10]


class LeaseHistory:
    """`budget-leases` folded: each account's grants and reports, and what breaks the fold."""

    def __init__(self) -> None:
        self.ledger = Ledger()
        self.grants: defaultdict[AccountKey, list[_Grant]] = defaultdict(list)
        self.reports: defaultdict[AccountKey, list[_Report]] = defaultdict(list)
        self.invalid: list[LeaseBreach] = []
        self.records = 0

    def add(self, record: Record) -> None:
        """One record, in its partition's offset order (any order across partitions)."""
        self.records += 1
        where = f"budget-leases[{record.partition}]@{record.offset}"
        try:
            event = from_record(decode_lease_record(record.value or b""))
            fresh = self.ledger.apply(event)
        except (InvalidEvent, MoneyError, ValueError) as exc:
            self.invalid.append(
                LeaseBreach("lease_invalid", None, f"{where}: {exc}", record.timestamp)
            )
            return
        if not fresh or isinstance(event, LeaseReclaim):
            return
        key = (event.campaign_id, event.partition, LIFETIME if event.day is None else event.day)
        if isinstance(event, LeaseGrant):
            self.grants[key].append(
                _Grant(
                    event.seq,
                    event.answers,
                    event.amount,
                    event.granted,
                    event.version,
                    event.lifetime_limit,
                    event.daily_limit,
                    record.timestamp,
                )
            )
        elif isinstance(event, LeaseAsk | LeaseReturn):
            returned = self.ledger.accounts[key].returned
            is_return = isinstance(event, LeaseReturn)
            self.reports[key].append(
                _Report(event.seq, event.spent, returned, is_return, record.timestamp)
            )

    def held(self, key: AccountKey) -> Held:
        """The account's totals at the end of the history read."""
        return self.ledger.accounts.get(key) or Held()

    def campaigns(self) -> dict[str, dict[int, list[AccountKey]]]:
        """Per campaign, per deciding partition, its accounts (in order)."""
        found: defaultdict[str, defaultdict[int, list[AccountKey]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for key in sorted(self.ledger.accounts):
            found[key[0]][key[1]].append(key)
        return {campaign_id: dict(partitions) for campaign_id, partitions in found.items()}


class _Before:
    """(position, value) pairs: the most value among those placed before a position."""

    def __init__(self, pairs: Iterable[tuple[int, int]]) -> None:
        ordered = sorted(pairs)
        self._positions = [position for position, _ in ordered]
        self._most = list(accumulate((value for _, value in ordered), max))

    def most_below(self, position: int) -> int:
        """The most value placed strictly before `position` (0: none)."""
        index = bisect_left(self._positions, position)
        return self._most[index - 1] if index else 0


def breaches(
    history: LeaseHistory,
    served: Iterable[Served],
    versions: Budgets,
) -> list[LeaseBreach]:
    """Every way the history breaks (a) or (b) of the module's docstring."""
    return [
        *history.invalid,
        *overspent(history, served),
        *overreported(history),
        *overgranted(history, versions),
    ]


def overspent(history: LeaseHistory, served: Iterable[Served]) -> list[LeaseBreach]:
    """Served decisions after which a partition's served costs in an account exceed what it
    was granted minus what it returned: the first one on each account is named."""
    by_account: defaultdict[AccountKey, list[Served]] = defaultdict(list)
    for item in served:
        by_account[item.account].append(item)
    found = []
    for key, items in by_account.items():
        held = history.held(key)
        bound = held.granted - held.returned
        total = 0
        for item in sorted(items, key=lambda s: s.offset):
            total += item.cost
            if total > bound:
                found.append(
                    LeaseBreach(
                        "lease_overspent",
                        item.request_id,
                        f"{account_name(key)}: served {from_micros(total)}, but granted "
                        f"{from_micros(held.granted)} and returned {from_micros(held.returned)}",
                        item.timestamp,
                    )
                )
                break
    return found


def overreported(history: LeaseHistory) -> list[LeaseBreach]:
    """Reports claiming more spent and returned than the grants that could have reached the
    partition before them."""
    found = []
    for key, reports in history.reports.items():
        grants = _Before((g.answers, g.granted) for g in history.grants.get(key, []))
        for report in reports:
            granted = grants.most_below(report.seq)
            if report.spent + report.returned > granted:
                found.append(
                    LeaseBreach(
                        "lease_overspent",
                        None,
                        f"{account_name(key)}: its report {report.seq} counts "
                        f"{from_micros(report.spent)} spent and {from_micros(report.returned)} "
                        f"returned, but only {from_micros(granted)} was granted before it",
                        report.timestamp,
                    )
                )
                break
    return found


def overgranted(history: LeaseHistory, versions: Budgets) -> list[LeaseBreach]:
    """Grants beyond their budget, or naming a budget their configuration does not have;
    what is out at the end beyond the newest grant's budget."""
    found = []
    newest: dict[str, _Grant] = {}
    newest_of_day: dict[tuple[str, int], _Grant] = {}
    for key, grants in history.grants.items():
        campaign_id, _, account = key
        # A return's spent + returned is what its partition had been granted then.
        returns = _Before(
            (r.spent + r.returned, r.returned) for r in history.reports.get(key, []) if r.is_return
        )
        for grant in grants:
            problem = _grant_problem(key, grant, returns, versions)
            if problem is not None:
                kind: LeaseKind = "lease_invalid" if problem[0] else "lease_overgranted"
                found.append(LeaseBreach(kind, None, problem[1], grant.timestamp))
            if grant.amount <= 0:
                continue
            if grant.version >= newest.get(campaign_id, grant).version:
                newest[campaign_id] = grant
            if account != LIFETIME:
                of_day = (campaign_id, account)
                if grant.version >= newest_of_day.get(of_day, grant).version:
                    newest_of_day[of_day] = grant
    out: defaultdict[str, int] = defaultdict(int)
    out_of_day: defaultdict[tuple[str, int], int] = defaultdict(int)
    for (campaign_id, _, account), held in history.ledger.accounts.items():
        out[campaign_id] += held.out
        if account != LIFETIME:
            out_of_day[(campaign_id, account)] += held.out
    for campaign_id, grant in newest.items():
        if grant.lifetime_limit is not None and out[campaign_id] > grant.lifetime_limit:
            found.append(
                LeaseBreach(
                    "lease_overgranted",
                    None,
                    f"{campaign_id}: {from_micros(out[campaign_id])} granted and not returned, "
                    f"over its lifetime budget {from_micros(grant.lifetime_limit)} "
                    f"(version {grant.version})",
                    grant.timestamp,
                )
            )
    for (campaign_id, day), grant in newest_of_day.items():
        spent = out_of_day[(campaign_id, day)]
        if grant.daily_limit is not None and spent > grant.daily_limit:
            found.append(
                LeaseBreach(
                    "lease_overgranted",
                    None,
                    f"{campaign_id}: {from_micros(spent)} of {_day(day)} granted and not "
                    f"returned, over its daily budget {from_micros(grant.daily_limit)} "
                    f"(version {grant.version})",
                    grant.timestamp,
                )
            )
    return found


def _grant_problem(
    key: AccountKey,
    grant: _Grant,
    returns: _Before,
    versions: Budgets,
) -> tuple[bool, str] | None:
    """(invalid, why) when a grant breaks a rule: invalid for a budget its configuration
    lacks, else for more out on its partition than its budget."""
    campaign_id, _, account = key
    name = f"{account_name(key)}: grant {grant.seq}"
    terms = versions.get((campaign_id, grant.version))
    if terms is None:
        return True, f"{name} names version {grant.version}, no configuration of the campaign"
    if (terms.lifetime, terms.daily) != (grant.lifetime_limit, grant.daily_limit):
        return True, f"{name} carries another budget than version {grant.version}'s"
    if (account == LIFETIME) != (grant.daily_limit is None):
        return True, f"{name} is of an account its budget does not have"
    if grant.amount <= 0:
        return None
    # What the partition had given back before it applied this grant, at most.
    returned = returns.most_below(grant.granted)
    held = grant.granted - returned
    for limit, label in ((grant.lifetime_limit, "lifetime"), (grant.daily_limit, "daily")):
        if limit is not None and held > limit:
            return False, (
                f"{name} leaves the partition {from_micros(held)} granted and not returned, "
                f"over its {label} budget {from_micros(limit)}"
            )
    return None
