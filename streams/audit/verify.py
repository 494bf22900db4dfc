"""The verifier: feed it the records of the five topics, get the summary and every violation.

Pure (no I/O), so it is tested without Kafka. `Auditor.add` takes records in any order across
topics and partitions (offset order within a partition, as Kafka gives them); `finish` then
rebuilds what the worker knew from the events alone and checks each decision inside the
window:

- requests are validated exactly as the worker's decision stage does (`decode_request`,
  `check_event_time`); invalid ones belong to the DLQ and need no decision;
- a request_id seen again within 24 h of event time (docs/design.md) needs no second decision;
  one seen again later may get one (the worker remembers ids at least that long);
- every request that needs a decision has one, and none has more; every decision has a
  request and copies its fields;
- the decision's `campaign_version` names a configuration of its campaign, never one older
  than a decision of an earlier request of the same user key (a user's requests reach the
  worker in their partition's order), and `campaign_unknown` only when no configuration is
  in force (none named, or deleted since);
- the outcome agrees with the worker's own rules (`DecisionBook` on an empty state gives what
  no state can change: inactive, anonymous, a cost above the budget), a served cost is
  cpm/1000 in the campaign's currency, and no cap or budget is broken
  (`streams.invariants.cap_breaches`, `budget_breaches`);
- a denial for a cap or a budget is plausible: the named cap or budget of that configuration
  is full even in the final served history (state only grows, so it was full then too);
- every served decision under a budget spent from the lease of its request's partition, and
  every lease kept within the budget (`streams.audit.leases`, folding `budget-leases`).

Served decisions outside the window still count for the state (caps, budgets); only
decisions inside it are reported on.
"""

from __future__ import annotations

from bisect import insort
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, get_args

import msgspec

from models.codec import InvalidEvent, check_event_time, decode, decode_request
from models.events import (
    AdDenied,
    AdServed,
    DenialReason,
    FrequencyCap,
    RequestFields,
    request_fields,
)
from models.money import MoneyError, from_micros, to_micros
from streams.audit.configs import ConfigHistory
from streams.audit.findings import (
    CampaignSpend,
    Record,
    Summary,
    TopicKind,
    Violation,
    ViolationKind,
)
from streams.audit.leases import LeaseHistory, Served, placed
from streams.audit.leases import breaches as lease_breaches
from streams.audit.window import Window, iso
from streams.decision_reader import Decision
from streams.invariants import (
    budget_breaches,
    cap_breaches,
    cap_peaks,
    spend_by_campaign,
    spend_by_day,
)
from streams.state import frequency, spend
from streams.state.campaigns import CampaignRules
from streams.state.decision_book import DecisionBook, Deny
from streams.state.leases import Terms
from streams.timeline import Timeline
from streams.timeline import build as build_timeline

DUPLICATE_WINDOW_MS = 24 * 3_600_000
"""docs/design.md: a request_id seen again within (at least) 24 h of event time gets no decision."""
REQUEST_CONTEXT_MS = 2 * DUPLICATE_WINDOW_MS
"""How far before `--from` requests are read, to know which ones inside are re-sent."""

DENIAL_REASONS: tuple[str, ...] = get_args(DenialReason)
_COPIED = ("campaign_id", "placement_id", "user_id", "timestamp", "correlator")
_STATELESS = frozenset({"campaign_unknown", "campaign_inactive", "anonymous"})


class _Request(RequestFields, frozen=True):
    """What the audit keeps of one valid request message."""

    partition: int
    offset: int


@dataclass
class Audit:
    summary: Summary
    served: list[Decision]
    """The served decision of each request (a second one for a request excluded)."""
    timeline: Timeline
    """What `--plot` draws, of the decisions inside the window."""


class _Caps(msgspec.Struct, frozen=True):
    """A configuration's caps, in the form `invariants.cap_peaks` reads."""

    frequency_caps: tuple[FrequencyCap, ...]


class Auditor:
    def __init__(self, window: Window | None = None, *, history_ms: int | None = None) -> None:
        """`history_ms`: the workers' impression history (`ADSTREAM_IMPRESSION_HISTORY_S`);
        a cap whose window is longer is held to the last `history_ms` of it, all the worker
        is sure to have counted (`streams.invariants.cap_breaches`). None: whole windows."""
        self.window = window or Window()
        self.history_ms = history_ms
        self.configs = ConfigHistory()
        self.leases = LeaseHistory()
        self.records: Counter[str] = Counter()
        self.requests: defaultdict[str, list[_Request]] = defaultdict(list)
        self.decisions: defaultdict[str, list[Decision]] = defaultdict(list)
        self.messages = 0
        self.valid = 0
        self.invalid: Counter[str] = Counter()
        self.undecodable: list[Violation] = []

    def add(self, kind: TopicKind, record: Record) -> None:
        self.records[kind] += 1
        if kind == "campaigns":
            self.configs.add(record)
        elif kind == "leases":
            self.leases.add(record)
        elif kind == "requests":
            self._add_request(record)
        else:
            self._add_decision(kind, record)

    def add_all(self, kind: TopicKind, records: Iterable[Record]) -> None:
        for record in records:
            self.add(kind, record)

    def _add_request(self, record: Record) -> None:
        try:
            request = decode_request(record.value or b"")
            check_event_time(request.context.timestamp, record.timestamp)
        except InvalidEvent as exc:
            if record.timestamp in self.window:
                self.messages += 1
                self.invalid[exc.reason] += 1
            return
        context = request.context
        if context.timestamp in self.window:
            self.messages += 1
            self.valid += 1
        self.requests[context.request_id].append(
            _Request(**request_fields(request), partition=record.partition, offset=record.offset)
        )

    def _add_decision(self, kind: TopicKind, record: Record) -> None:
        topic = "ad-served" if kind == "served" else "ad-denied"
        event: AdServed | AdDenied
        try:
            # The worker's outputs have no size cap: an AdServed carries its VAST document.
            value = record.value or b""
            event = (
                decode(value, AdServed, max_bytes=None)
                if kind == "served"
                else decode(value, AdDenied, max_bytes=None)
            )
        except InvalidEvent as exc:
            if record.timestamp in self.window:
                self.undecodable.append(
                    Violation(
                        "undecodable_decision",
                        None,
                        f"{topic}[{record.partition}]@{record.offset}: {exc}",
                    )
                )
            return
        payload: dict[str, Any] = {
            "request_id": event.request_id,
            "correlator": event.correlator,
            "campaign_id": event.campaign_id,
            "placement_id": event.placement_id,
            "user_id": event.user_id,
            "timestamp": event.timestamp,
            "campaign_version": event.campaign_version,
            "where": f"{topic}[{record.partition}]@{record.offset}",
        }
        if isinstance(event, AdServed):
            # A cost that is not exact micros is a `wrong_cost`; it counts as nothing spent.
            try:
                cost = from_micros(to_micros(event.cost))
            except MoneyError:
                cost = "0"
            payload |= {"cost": cost, "cost_text": event.cost, "currency": event.currency}
        else:
            payload |= {"reason": event.reason, "detail": event.detail}
        decision = Decision(
            "served" if kind == "served" else "denied", payload, record.offset, record.partition
        )
        self.decisions[event.request_id].append(decision)

    def finish(self) -> Audit:
        return _Verification(self).run()


class _Verification:
    """One pass of `finish` over everything an `Auditor` collected."""

    def __init__(self, auditor: Auditor) -> None:
        self.auditor = auditor
        self.window = auditor.window
        self.configs = auditor.configs
        self.violations: list[Violation] = list(auditor.undecodable)
        self.kept: dict[str, list[Decision]] = {}
        """Per request_id, the decisions that count (one per request needing one)."""
        self.matched: dict[str, _Request] = {}
        """Per request_id, its first request needing a decision."""
        self.duplicates = 0
        self.distinct = 0

    def flag(self, kind: ViolationKind, request_id: str | None, detail: str) -> None:
        self.violations.append(Violation(kind, request_id, detail))

    def run(self) -> Audit:
        auditor = self.auditor
        for request_id in auditor.requests.keys() | auditor.decisions.keys():
            self._account(request_id)
        kept = [d for decisions in self.kept.values() for d in decisions]
        served = [d for d in kept if d.topic == "served"]
        # The state the worker had built, recomputed from every served decision read.
        self.final = _FinalState(served)
        for decision in kept:
            if decision.payload["timestamp"] in self.window:
                self._check(decision)
        inside = {d.payload["request_id"] for d in served if d.payload["timestamp"] in self.window}
        for breach in [
            *cap_breaches(served, self.configs.versions, auditor.history_ms),
            *budget_breaches(served, self.configs.versions),
        ]:
            if breach.request_id in inside:
                self.flag(breach.kind, breach.request_id, breach.detail)
        for lease_breach in lease_breaches(
            auditor.leases,
            self._spent_from_leases(served),
            {key: Terms.of(rules) for key, rules in self.configs.versions.items()},
        ):
            if lease_breach.timestamp in self.window:
                self.flag(lease_breach.kind, lease_breach.request_id, lease_breach.detail)
        self._check_versions_in_order()
        return Audit(self._summary(kept), served, self._timeline(kept))

    def _spent_from_leases(self, served: list[Decision]) -> list[Served]:
        """The served decisions a budget bounds, each on the lease it spent: of its
        request's partition, in the account its configuration's budget names."""
        spent = []
        for decision in served:
            payload = decision.payload
            request = self.matched.get(payload["request_id"])
            version = payload["campaign_version"]
            rules = None if version is None else self.configs.rules(payload["campaign_id"], version)
            if request is None or rules is None:
                continue  # reported as no request or a wrong version
            found = placed(
                payload["request_id"],
                payload["campaign_id"],
                request.partition,
                request.offset,
                to_micros(payload["cost"]),
                payload["timestamp"],
                Terms.of(rules),
            )
            if found is not None:
                spent.append(found)
        return spent

    def _timeline(self, kept: list[Decision]) -> Timeline:
        """Peaks and budgets under each campaign's newest configuration."""
        newest: dict[str, CampaignRules] = {}
        for (campaign_id, _), rules in sorted(self.configs.versions.items()):
            newest[campaign_id] = rules
        caps = {
            campaign_id: _Caps(
                tuple(FrequencyCap(cap.max, cap.window_ms // 1000) for cap in rules.caps)
            )
            for campaign_id, rules in newest.items()
        }
        inside = [d for d in kept if d.payload["timestamp"] in self.window]
        served = [d for d in inside if d.topic == "served" and d.payload["campaign_id"] in caps]
        return build_timeline(inside, list(newest.values()), cap_peaks(served, caps))

    def _account(self, request_id: str) -> None:
        """Which requests need a decision, which decisions count, and which are too many."""
        window = self.window
        fresh: list[_Request] = []
        for request in sorted(
            self.auditor.requests.get(request_id, ()),
            key=lambda r: (r.timestamp, r.partition, r.offset),
        ):
            if all(abs(request.timestamp - f.timestamp) > DUPLICATE_WINDOW_MS for f in fresh):
                fresh.append(request)
                self.distinct += request.timestamp in window
            else:
                self.duplicates += request.timestamp in window
        # A served decision counts before a denial: it is the one that was charged.
        decisions = sorted(
            self.auditor.decisions.get(request_id, ()),
            key=lambda d: (d.topic != "served", d.partition, d.offset),
        )
        kept, extra = decisions[: max(1, len(fresh))], decisions[max(1, len(fresh)) :]
        self.kept[request_id] = kept
        if fresh:
            self.matched[request_id] = fresh[0]
        if not fresh:
            for decision in kept:
                if decision.payload["timestamp"] in window:
                    self.flag(
                        "decision_without_request",
                        request_id,
                        f"{decision.payload['where']}: no valid request with this id in "
                        "ad-requests",
                    )
        elif not decisions and fresh[0].timestamp in window:
            self.flag(
                "no_decision",
                request_id,
                f"ad-requests[{fresh[0].partition}]@{fresh[0].offset} "
                f"({fresh[0].campaign_id}, {iso(fresh[0].timestamp)}) has no decision",
            )
        if extra and any(d.payload["timestamp"] in window for d in extra):
            places = ", ".join(d.payload["where"] for d in decisions)
            self.flag(
                "duplicate_decision",
                request_id,
                f"{len(decisions)} decisions for {len(fresh)} request(s): {places}",
            )
        for decision in kept:
            match = next(
                (
                    r
                    for r in fresh
                    if (r.timestamp, r.correlator)
                    == (decision.payload["timestamp"], decision.payload["correlator"])
                ),
                fresh[0] if fresh else None,
            )
            if match is not None and decision.payload["timestamp"] in window:
                self._check_copied(decision, match)

    def _check_copied(self, decision: Decision, request: _Request) -> None:
        payload = decision.payload
        differing = [
            f"{name} {payload[name]!r} (request: {getattr(request, name)!r})"
            for name in _COPIED
            if payload[name] != getattr(request, name)
        ]
        if differing:
            self.flag(
                "decision_mismatch",
                payload["request_id"],
                f"{payload['where']}: " + ", ".join(differing),
            )

    def _check(self, decision: Decision) -> None:
        payload = decision.payload
        request_id, campaign_id = payload["request_id"], payload["campaign_id"]
        version = payload["campaign_version"]
        where = payload["where"]
        reason = decision.reason
        if reason == "campaign_unknown":
            if version is not None:
                self.flag(
                    "wrong_version",
                    request_id,
                    f"{where}: campaign_unknown names version {version} (must be null)",
                )
            return
        if version is None:
            self.flag(
                "wrong_version",
                request_id,
                f"{where}: {reason or 'served'} names no campaign_version",
            )
            return
        rules = self.configs.rules(campaign_id, version)
        if rules is None:
            self.flag(
                "wrong_version",
                request_id,
                f"{where}: version {version}: {self.configs.why_not(campaign_id, version)}",
            )
            return
        # What no state can change (inactive, anonymous, a cost above a budget): the
        # worker's own rules on an empty state.
        verdict = DecisionBook().evaluate(
            request_id=request_id,
            user_id=payload["user_id"],
            t=payload["timestamp"],
            rules=rules,
            impressions=None,
        )
        refused = verdict.reason if isinstance(verdict, Deny) else None
        if refused is None and spend.exceeded_budget(
            spend.Spend(), rules.cost_micros, payload["timestamp"], *rules.budgets
        ):
            refused = "budget_exhausted"
        if decision.topic == "served":
            if refused is not None:
                self.flag(
                    "should_have_denied",
                    request_id,
                    f"{where}: served, but version {version} refuses it ({refused})",
                )
            self._check_cost(decision, rules)
            return
        allowed: set[str]
        if refused in _STATELESS:
            allowed = {refused}
        elif refused == "budget_exhausted":
            allowed = {"frequency_cap", "budget_exhausted"}  # caps are checked first
        else:
            allowed = set(DENIAL_REASONS) - _STATELESS
        if reason not in allowed:
            self.flag(
                "implausible_denial",
                request_id,
                f"{where}: {reason}, but under version {version} the request "
                + (f"is refused as {refused}" if refused else "is neither inactive nor anonymous"),
            )
            return
        problem = self._state_problem(decision, rules)
        if problem is not None:
            self.flag("implausible_denial", request_id, f"{where}: {problem}")

    def _check_cost(self, decision: Decision, rules: CampaignRules) -> None:
        payload = decision.payload
        try:
            cost: int | None = to_micros(payload["cost_text"])
        except MoneyError:
            cost = None
        if cost != rules.cost_micros or payload["currency"] != rules.currency:
            self.flag(
                "wrong_cost",
                payload["request_id"],
                f"{payload['where']}: cost {payload['cost_text']} {payload['currency']}, but "
                f"version {rules.version} charges "
                f"{from_micros(rules.cost_micros)} {rules.currency}",
            )

    def _state_problem(self, decision: Decision, rules: CampaignRules) -> str | None:
        """Why a cap or budget denial is contradicted by the served history, if it is."""
        payload = decision.payload
        reason, detail, t = decision.reason, payload["detail"], payload["timestamp"]
        if reason == "frequency_cap":
            if detail == "late":
                return None  # refused because the state no longer reached back that far
            cap = next((c for c in rules.caps if c.label == detail), None)
            if cap is None or payload["user_id"] is None:
                return f"frequency_cap {detail!r} names no cap of version {rules.version}"
            times = self.final.times(payload["campaign_id"], payload["user_id"])
            if frequency.blocking_cap(times, [cap], t) is None:
                return (
                    f"frequency_cap {detail}, but no window of it around {iso(t)} holds "
                    f"{cap.max} served impressions"
                )
        elif reason == "budget_exhausted":
            if detail == "daily (late)":
                return None  # a day the state had dropped
            lifetime, day = self.final.spent(payload["campaign_id"], t)
            if detail == "lifetime":
                limit = rules.lifetime_micros
                exceeded = spend.exceeded_budget(
                    spend.Spend(lifetime), rules.cost_micros, t, limit, None
                )
            elif detail == "daily":
                limit = rules.daily_micros
                exceeded = spend.exceeded_budget(
                    spend.Spend(0, {spend.utc_day(t): day}), rules.cost_micros, t, None, limit
                )
            else:
                return f"budget_exhausted {detail!r} names no budget"
            if exceeded != detail:
                return (
                    f"budget_exhausted {detail}, but version {rules.version}'s {detail} budget "
                    f"({'none' if limit is None else from_micros(limit)}) has room for "
                    f"{from_micros(rules.cost_micros)} even after every served impression"
                )
        return None

    def _check_versions_in_order(self) -> None:
        """A user key's requests reach the worker in their partition's order, and a campaign's
        versions only grow along the worker's stream: a later request of the same key and
        campaign never applies an older configuration, nor finds none while one is in force
        (unless the campaign was deleted after it)."""
        by_partition: defaultdict[int, list[_Request]] = defaultdict(list)
        for request_id, request in self.matched.items():
            if self.kept.get(request_id):
                by_partition[request.partition].append(request)
        for requests in by_partition.values():
            requests.sort(key=lambda r: r.offset)
            last: dict[str, tuple[int, str]] = {}
            for request in requests:
                decision = self.kept[request.request_id][0]
                version = decision.payload["campaign_version"]
                before = last.get(request.campaign_id)
                if decision.payload["campaign_id"] != request.campaign_id:
                    continue  # a mismatch, reported as such
                if before is not None and request.timestamp in self.window:
                    if version is not None and version < before[0]:
                        self.flag(
                            "version_not_in_force",
                            request.request_id,
                            f"{decision.payload['where']}: version {version}, but the earlier "
                            f"request {before[1]} of the same user key had version {before[0]}",
                        )
                    elif version is None and not self.configs.deleted_after(
                        request.campaign_id, before[0]
                    ):
                        self.flag(
                            "version_not_in_force",
                            request.request_id,
                            f"{decision.payload['where']}: campaign_unknown, but the earlier "
                            f"request {before[1]} of the same user key had version "
                            f"{before[0]} and the campaign was not deleted since",
                        )
                if version is not None and (before is None or version >= before[0]):
                    last[request.campaign_id] = (version, request.request_id)

    def _summary(self, kept: list[Decision]) -> Summary:
        inside = [d for d in kept if d.payload["timestamp"] in self.window]
        served = [d for d in inside if d.topic == "served"]
        denials = Counter(d.reason for d in inside if d.topic == "denied")
        spend_rows: dict[tuple[str, str], tuple[int, int]] = {}
        for decision in served:
            payload = decision.payload
            key = (payload["campaign_id"], payload["currency"])
            count, micros = spend_rows.get(key, (0, 0))
            spend_rows[key] = (count + 1, micros + to_micros(payload["cost"]))
        auditor = self.auditor
        return Summary(
            window_start_ms=self.window.start_ms,
            window_end_ms=self.window.end_ms,
            records=dict(auditor.records),
            requests=auditor.messages,
            valid=auditor.valid,
            dead_lettered=dict(sorted(auditor.invalid.items())),
            duplicates=self.duplicates,
            distinct=self.distinct,
            served=len(served),
            denied={r: denials[r] for r in DENIAL_REASONS if denials[r]},
            spend=[
                CampaignSpend(campaign_id, currency, count, micros)
                for (campaign_id, currency), (count, micros) in sorted(spend_rows.items())
            ],
            violations=sorted(
                self.violations, key=lambda v: (v.request_id or "", v.kind, v.detail)
            ),
        )


class _FinalState:
    """Caps and spend after every served decision: what no denial's moment exceeded."""

    def __init__(self, served: list[Decision]) -> None:
        self._times: defaultdict[tuple[str, str], list[int]] = defaultdict(list)
        for decision in served:
            payload = decision.payload
            if payload["user_id"] is not None:
                insort(
                    self._times[(payload["campaign_id"], payload["user_id"])], payload["timestamp"]
                )
        self._lifetime = spend_by_campaign(served)
        self._daily = spend_by_day(served)

    def times(self, campaign_id: str, user_id: str) -> list[int]:
        return self._times.get((campaign_id, user_id), [])

    def spent(self, campaign_id: str, t: int) -> tuple[int, int]:
        """Lifetime micros, and micros on the UTC day of `t`."""
        return (
            self._lifetime.get(campaign_id, 0),
            self._daily.get((campaign_id, spend.utc_day(t)), 0),
        )
