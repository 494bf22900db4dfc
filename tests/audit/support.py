"""Building histories for the audit's tests: events, their records, and a reference worker.

`History` is a deployment's topics as lists of records (campaigns and served in one partition
each, so offsets are list positions). `Simulator` writes into one the history a correct worker
would: one decision at a time in stream order, with the worker's own rules
(`streams.state.decision_book.DecisionBook`, `streams.state`), so the audit must find nothing
in it. Like
the worker it remembers every impression of an identified user, also those served while the
campaign had no cap (docs/design.md: "fewer than `max` impressions of that user for that
campaign"); unlike it, it never forgets one (the worker keeps its impression history, 7 days
by default, or the campaign's longest window if longer: `test_verify.py`,
`test_a_cap_longer_than_the_history_...`). It decides on one partition, spending from that
partition's lease like the worker (`Leases`: the lease rules and the campaign's bank answering
each other at once), so its history holds the `budget-leases` records that cover its spend.
The Kafka tests write the same events to real topics instead.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from models.codec import encode
from models.context import user_id_of, user_key
from models.events import (
    SCHEMA_VERSION,
    AdDenied,
    AdRequest,
    AdServed,
    Campaign,
    DenialReason,
    request_fields,
)
from models.money import from_micros
from streams.audit.findings import Record, Summary, TopicKind
from streams.audit.verify import Audit, Auditor
from streams.audit.window import Window
from streams.state import spend
from streams.state.campaigns import CampaignRules
from streams.state.decision_book import DecisionBook, Deny
from streams.state.frequency import Impressions
from streams.state.leases import (
    Bank,
    BudgetBank,
    Covered,
    Lease,
    LeaseAsk,
    LeaseBook,
    LeaseEvent,
    LeaseReturn,
    LeaseVerdict,
    Terms,
    ToBank,
    to_record,
)
from streams.state.spend import Spend
from streams.vast.result import ResolvedAd
from tests.pipeline.harness import campaign, request

__all__ = ["AD", "History", "Simulator", "campaign", "denied", "request", "served"]

AD = ResolvedAd(
    id="ad-1",
    sequence=None,
    ad_system="audit-tests",
    ad_title="an ad",
    impressions=("https://track.example/imp",),
    errors=(),
    creatives=(),
    vast="<VAST version='4.2'/>",
)
URL = "https://ads.example/vast"


def served(
    ad_request: AdRequest,
    rules: CampaignRules,
    *,
    cost: str | None = None,
    currency: str | None = None,
    version: int | None = None,
) -> AdServed:
    return AdServed(
        **request_fields(ad_request),
        schema=SCHEMA_VERSION,
        cost=from_micros(rules.cost_micros) if cost is None else cost,
        currency=rules.currency if currency is None else currency,
        ad=AD,
        vast=AD.vast,
        chain=(),
        campaign_version=rules.version if version is None else version,
    )


def denied(
    ad_request: AdRequest,
    reason: DenialReason,
    version: int | None,
    detail: str | None = None,
) -> AdDenied:
    return AdDenied(
        **request_fields(ad_request),
        schema=SCHEMA_VERSION,
        reason=reason,
        detail=detail,
        campaign_version=version,
    )


Entry = tuple[TopicKind, bytes | None, bytes | None, int, int]
"""(topic, key, value, timestamp, partition)."""


@dataclass
class History:
    """Topics as record lists, in the order written."""

    log: list[Entry] = field(default_factory=list)

    def append(
        self, kind: TopicKind, key: bytes | None, value: bytes | None, t: int, p: int
    ) -> int:
        offset = sum(1 for e in self.log if e[0] == kind and e[4] == p)
        self.log.append((kind, key, value, t, p))
        return offset

    def campaign(self, config: Campaign, key: str | None = None) -> CampaignRules:
        offset = self.append(
            "campaigns", (key or config.campaign_id).encode(), encode(config), 0, 0
        )
        return CampaignRules.from_campaign(config, offset)

    def delete(self, campaign_id: str) -> int:
        return self.append("campaigns", campaign_id.encode(), None, 0, 0)

    def raw_campaign(self, key: str, value: bytes) -> int:
        return self.append("campaigns", key.encode(), value, 0, 0)

    def request(self, ad_request: AdRequest, partition: int = 0) -> None:
        context = ad_request.context
        self.append(
            "requests", user_key(context).encode(), encode(ad_request), context.timestamp, partition
        )

    def raw_request(self, value: bytes | None, timestamp: int, partition: int = 0) -> None:
        self.append("requests", b"raw", value, timestamp, partition)

    def lease_event(self, event: LeaseEvent, t: int) -> None:
        """A `budget-leases` record, stamped like the worker's (its watermark, else `t`)."""
        stamp = event.watermark if isinstance(event, LeaseAsk | LeaseReturn) else t
        self.append("leases", event.campaign_id.encode(), encode(to_record(event)), stamp, 0)

    def decision(self, event: AdServed | AdDenied) -> None:
        kind: TopicKind = "served" if isinstance(event, AdServed) else "denied"
        self.append(kind, event.campaign_id.encode(), encode(event), event.timestamp, 0)

    def records(self) -> Iterable[tuple[TopicKind, Record]]:
        offsets: dict[tuple[str, int], int] = {}
        for kind, key, value, t, partition in self.log:
            offset = offsets.get((kind, partition), 0)
            offsets[(kind, partition)] = offset + 1
            yield kind, Record(partition, offset, t, key, value)

    def audit(self, window: Window | None = None, *, history_ms: int | None = None) -> Audit:
        auditor = Auditor(window, history_ms=history_ms)
        for kind, record in self.records():
            auditor.add(kind, record)
        return auditor.finish()

    def summary(self, window: Window | None = None, *, history_ms: int | None = None) -> Summary:
        return self.audit(window, history_ms=history_ms).summary

    def replace(self, old: AdServed | AdDenied, new: AdServed | AdDenied | None) -> None:
        """Put `new` where `old` was written (or drop it), as a forger would."""
        old_kind: TopicKind = "served" if isinstance(old, AdServed) else "denied"
        index = next(i for i, e in enumerate(self.log) if e[0] == old_kind and e[2] == encode(old))
        if new is None:
            del self.log[index]
            return
        kind: TopicKind = "served" if isinstance(new, AdServed) else "denied"
        self.log[index] = (kind, new.campaign_id.encode(), encode(new), new.timestamp, 0)


Outcome = Literal["served", "no_fill"]


class Leases:
    """Partition 0's leases and the campaigns' banks, each answering the other at once; every
    event they exchange is written to the history."""

    def __init__(self, history: History) -> None:
        self.history = history
        self.book = LeaseBook()
        self.bank_rules = BudgetBank(self.book.policy)
        self.leases: dict[str, Lease] = {}
        self.banks: dict[str, Bank] = {}

    def configure(self, rules: CampaignRules, t: int) -> None:
        bank = self.banks.get(rules.campaign_id)
        if bank is not None:
            self._settle(rules, t, self.bank_rules.configure(bank, Terms.of(rules)))

    def take(self, rules: CampaignRules, t: int) -> LeaseVerdict:
        """Spend one impression, waiting for the bank's answer as the worker's parking does."""
        lease = self.leases.setdefault(rules.campaign_id, Lease(rules.campaign_id, 0))
        while True:
            verdict, events = self.book.take(lease, Terms.of(rules), t)
            self._settle(rules, t, events)
            if isinstance(verdict, Covered) or verdict.dry is not None:
                return verdict

    def give_back(self, rules: CampaignRules, t: int) -> None:
        lease = self.leases[rules.campaign_id]
        self._settle(rules, t, self.book.give_back(lease, Terms.of(rules), t, rules.cost_micros))

    def _settle(self, rules: CampaignRules, t: int, events: Sequence[LeaseEvent]) -> None:
        pending = list(events)
        terms = Terms.of(rules)
        while pending:
            event = pending.pop(0)
            self.history.lease_event(event, t)
            if isinstance(event, LeaseAsk | LeaseReturn):
                bank = self.banks.setdefault(event.campaign_id, Bank(event.campaign_id))
                if bank.terms is None or bank.terms.version < terms.version:
                    pending += self.bank_rules.configure(bank, terms)
                pending += self.bank_rules.receive(bank, event)
            else:
                lease = self.leases[event.campaign_id]
                replies: list[ToBank] = self.book.receive(lease, event, terms)
                pending += replies


class Simulator:
    """A correct worker deciding one request at a time into a `History`."""

    def __init__(self, history: History | None = None) -> None:
        self.history = history or History()
        self.rules: dict[str, CampaignRules] = {}
        self.impressions: dict[tuple[str, str], Impressions] = {}
        self.spent: dict[str, Spend] = {}
        self.seen: set[str] = set()
        self.decisions: list[AdServed | AdDenied] = []
        self.versions: dict[tuple[str, int], CampaignRules] = {}
        self.requests: dict[str, AdRequest] = {}
        self.leases = Leases(self.history)
        self.now = 0
        """The newest event time decided."""

    def load(self, config: Campaign) -> CampaignRules:
        rules = self.history.campaign(config)
        self.rules[config.campaign_id] = rules
        self.versions[(config.campaign_id, rules.version)] = rules
        self.leases.configure(rules, self.now)
        return rules

    def delete(self, campaign_id: str) -> None:
        self.history.delete(campaign_id)
        self.rules.pop(campaign_id, None)

    def decide(
        self, ad_request: AdRequest, outcome: Outcome = "served"
    ) -> AdServed | AdDenied | None:
        self.history.request(ad_request)
        context = ad_request.context
        if context.request_id in self.seen:
            return None
        self.seen.add(context.request_id)
        self.requests[context.request_id] = ad_request
        self.now = max(self.now, context.timestamp)
        rules = self.rules.get(ad_request.campaign_id)
        user_id = user_id_of(context)
        key = (ad_request.campaign_id, user_id or "")
        verdict = DecisionBook().evaluate(
            request_id=context.request_id,
            user_id=user_id,
            t=context.timestamp,
            rules=rules,
            impressions=self.impressions.get(key),
        )
        if rules is not None and not isinstance(verdict, Deny):
            exceeded = spend.exceeded_budget(
                self.spent.get(ad_request.campaign_id) or Spend(),
                rules.cost_micros,
                context.timestamp,
                rules.lifetime_micros,
                rules.daily_micros,
            )
            if exceeded is not None:
                verdict = Deny("budget_exhausted", exceeded)
        event: AdServed | AdDenied
        if isinstance(verdict, Deny):
            version = None if rules is None else rules.version
            event = denied(ad_request, verdict.reason, version, verdict.detail)
        else:
            assert rules is not None
            taken = self.leases.take(rules, context.timestamp)
            assert isinstance(taken, Covered), f"the lease disagrees with the spend: {taken}"
            if outcome == "no_fill":
                self.leases.give_back(rules, context.timestamp)
                event = denied(ad_request, "no_fill", rules.version, "303")
            else:
                if user_id is not None:
                    insort(self.impressions.setdefault(key, Impressions()).times, context.timestamp)
                spent = self.spent.setdefault(ad_request.campaign_id, Spend())
                spend.charge(spent, rules.cost_micros, context.timestamp)
                event = served(ad_request, rules)
        self.history.decision(event)
        self.decisions.append(event)
        return event


def kinds_of(summary: Summary, request_id: str) -> set[str]:
    return {v.kind for v in summary.violations if v.request_id == request_id}


def with_fields(event: AdServed | AdDenied, **changes: object) -> AdServed | AdDenied:
    return msgspec.structs.replace(event, **changes)


__all__ += ["URL", "kinds_of", "with_fields"]
