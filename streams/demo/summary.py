"""The demo's summary: from the decisions read back to tables a person can check (pure).

`summarize` counts outcomes, recomputes spend and cap peaks from the served events alone
(`streams.invariants`), shows each campaign's budget leases per deciding partition (folded
from `budget-leases` and audited like `adstream audit` does: `streams.audit.leases`) and lists
every broken invariant; `render` prints it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import get_args

import msgspec

from models.events import Campaign, DenialReason, FrequencyCap
from models.money import from_micros, to_micros
from streams.audit.leases import LeaseHistory, Served, placed
from streams.audit.leases import breaches as lease_breaches
from streams.decision_reader import Decision
from streams.invariants import (
    DAY_MS,
    CapPeak,
    budget_violations,
    cap_peaks,
    cap_violations,
    spend_by_campaign,
    spend_by_day,
)
from streams.plain_table import plain_table
from streams.state.campaigns import CampaignRules, Cap
from streams.state.leases import Terms
from streams.timeline import Timeline
from streams.timeline import build as build_timeline

DENIAL_REASONS: tuple[str, ...] = get_args(DenialReason)


class Expected(msgspec.Struct, frozen=True):
    """What the publisher sent, i.e. what the decisions must account for."""

    request_ids: frozenset[str]
    """Valid, distinct requests: exactly one decision each."""
    resent: int
    """Duplicates published: none may get a decision of its own."""
    malformed: int
    """Messages that must each land in the DLQ."""
    versions: dict[str, int]
    """The `campaigns` offset of each campaign loaded: the version its decisions apply."""
    placement: dict[str, tuple[int, int]] = msgspec.field(default_factory=dict)
    """Per request_id: the `ad-requests` partition it went to and its place in the stream
    (the order its partition decides in)."""


class SpendRow(msgspec.Struct, frozen=True):
    campaign_id: str
    active: bool
    currency: str
    cpm: str
    served: int
    spent: int
    """Micros, summed over the served events."""
    lifetime: int | None
    busiest_day: int | None
    """UTC day number (days since 1970-01-01) of the most spend; None before any."""
    busiest_day_spent: int
    daily: int | None
    tables: int | None
    """The worker's own lifetime spend in micros; None when not asked."""


class LeaseRow(msgspec.Struct, frozen=True):
    """A campaign's lease on one deciding partition, all its accounts together (micros)."""

    campaign_id: str
    partition: int
    granted: int
    returned: int
    spent: int
    """The served events decided on the partition."""

    @property
    def remaining(self) -> int:
        """Granted and neither returned nor served: what the lease holds."""
        return self.granted - self.returned - self.spent


class CapRow(msgspec.Struct, frozen=True):
    campaign_id: str
    cap: FrequencyCap
    peak: int
    """The most impressions one user got within one window of this cap."""
    user_id: str | None
    denied: int
    """Requests denied naming this cap."""


class Summary(msgspec.Struct, frozen=True):
    requests: int
    served: int
    denied: dict[str, int]
    """By reason, in `DenialReason`'s order, reasons that occurred only."""
    dead_letters: dict[str, int]
    """By the reason that starts a dead letter's `error`."""
    spend: list[SpendRow]
    caps: list[CapRow]
    leases: list[LeaseRow]
    resent: int
    duplicates: int
    """Second decisions seen for one request_id (exactly-once: 0)."""
    violations: list[str]
    """Every invariant that did not hold, in words; empty when all held."""
    timeline: Timeline
    """What `--plot` draws."""

    @property
    def ok(self) -> bool:
        return not self.violations


def dead_letter_reason(letter: Decision) -> str:
    """`undecodable`, `invalid`, ...: a `DeadLetter`'s error reads `<reason>: <detail>`."""
    error: str = letter.payload["error"]
    return error.split(":", 1)[0]


def summarize(
    expected: Expected,
    decisions: Mapping[str, Decision],
    duplicates: Sequence[Decision],
    dead_letters: Sequence[Decision],
    campaigns: Sequence[Campaign],
    table_spend: Mapping[str, int] | None = None,
    leases: LeaseHistory | None = None,
) -> Summary:
    """`decisions`: the first per request_id; `table_spend`: lifetime micros per campaign as
    the worker's tables hold them, to check against the served events; `leases`: the
    `budget-leases` records read (None: not shown)."""
    by_id = {campaign.campaign_id: campaign for campaign in campaigns}
    mine = [decisions[rid] for rid in expected.request_ids if rid in decisions]
    served = [decision for decision in mine if decision.topic == "served"]
    denials = Counter(decision.reason for decision in mine if decision.topic == "denied")
    violations = _accounting(expected, decisions, duplicates, dead_letters)
    violations += cap_violations(served, by_id)
    violations += budget_violations(served, by_id)
    spend = _spend_rows(served, campaigns, table_spend)
    peaks = cap_peaks(served, by_id)
    violations += [
        f"{row.campaign_id}: the worker's tables hold {from_micros(row.tables)} spent, "
        f"the served events {from_micros(row.spent)}"
        for row in spend
        if row.tables is not None and row.tables != row.spent
    ]
    lease_rows: list[LeaseRow] = []
    if leases is not None:
        spent = _on_leases(expected, served, by_id)
        budgets = {
            (c.campaign_id, expected.versions.get(c.campaign_id, 0)): Terms.of(
                CampaignRules.from_campaign(c, expected.versions.get(c.campaign_id, 0))
            )
            for c in campaigns
        }
        violations += [breach.detail for breach in lease_breaches(leases, spent, budgets)]
        lease_rows = _lease_rows(leases, spent, campaigns)
    return Summary(
        requests=len(expected.request_ids),
        served=len(served),
        denied={reason: denials[reason] for reason in DENIAL_REASONS if denials[reason]},
        dead_letters=dict(sorted(Counter(map(dead_letter_reason, dead_letters)).items())),
        spend=spend,
        caps=_cap_rows(peaks, mine),
        leases=lease_rows,
        resent=expected.resent,
        duplicates=len(duplicates),
        violations=violations,
        timeline=build_timeline(
            mine, [CampaignRules.from_campaign(c, version=0) for c in campaigns], peaks
        ),
    )


def _accounting(
    expected: Expected,
    decisions: Mapping[str, Decision],
    duplicates: Sequence[Decision],
    dead_letters: Sequence[Decision],
) -> list[str]:
    """Invariants 1 and 4: one decision per valid request, none else, every bad message kept;
    and every decision made under the campaign configuration loaded for it."""
    found = []
    missing = len(expected.request_ids - decisions.keys())
    if missing:
        found.append(f"{missing} of {len(expected.request_ids)} requests got no decision")
    unexpected = len(decisions.keys() - expected.request_ids)
    if unexpected:
        found.append(f"{unexpected} decisions for requests that were never sent")
    if duplicates:
        found.append(f"{len(duplicates)} extra decisions for requests already decided")
    if len(dead_letters) != expected.malformed:
        found.append(
            f"{len(dead_letters)} dead letters for {expected.malformed} malformed messages"
        )
    stale = sum(
        1
        for rid in expected.request_ids & decisions.keys()
        if (payload := decisions[rid].payload)["campaign_id"] in expected.versions
        and payload["campaign_version"] != expected.versions[payload["campaign_id"]]
    )
    if stale:
        found.append(f"{stale} decisions applied another version of their campaign than loaded")
    return found


def _spend_rows(
    served: Sequence[Decision],
    campaigns: Sequence[Campaign],
    table_spend: Mapping[str, int] | None,
) -> list[SpendRow]:
    totals = spend_by_campaign(served)
    days = spend_by_day(served)
    served_count = Counter(decision.payload["campaign_id"] for decision in served)
    rows = []
    for campaign in campaigns:
        rules = CampaignRules.from_campaign(campaign, version=0)
        campaign_days = {
            day: spent for (cid, day), spent in days.items() if cid == rules.campaign_id
        }
        busiest = max(campaign_days, key=lambda day: campaign_days[day], default=None)
        rows.append(
            SpendRow(
                campaign_id=campaign.campaign_id,
                active=campaign.active,
                currency=campaign.currency,
                cpm=campaign.cpm,
                served=served_count[campaign.campaign_id],
                spent=totals.get(campaign.campaign_id, 0),
                lifetime=rules.lifetime_micros,
                busiest_day=busiest,
                busiest_day_spent=0 if busiest is None else campaign_days[busiest],
                daily=rules.daily_micros,
                tables=None if table_spend is None else table_spend.get(campaign.campaign_id, 0),
            )
        )
    return rows


def _on_leases(
    expected: Expected, served: Sequence[Decision], campaigns: Mapping[str, Campaign]
) -> list[Served]:
    """The served events a budget bounds, each on the lease of its request's partition."""
    found = []
    for decision in served:
        payload = decision.payload
        where = expected.placement.get(payload["request_id"])
        campaign = campaigns.get(payload["campaign_id"])
        if where is None or campaign is None:
            continue
        version = expected.versions.get(campaign.campaign_id, 0)
        spent = placed(
            payload["request_id"],
            campaign.campaign_id,
            *where,
            to_micros(payload["cost"]),
            payload["timestamp"],
            Terms.of(CampaignRules.from_campaign(campaign, version)),
        )
        if spent is not None:
            found.append(spent)
    return found


def _lease_rows(
    leases: LeaseHistory, spent: Sequence[Served], campaigns: Sequence[Campaign]
) -> list[LeaseRow]:
    """One row per campaign and partition that holds a lease or spent without one."""
    served: Counter[tuple[str, int]] = Counter()
    for item in spent:
        served[item.account[:2]] += item.cost
    held = leases.campaigns()
    rows = []
    for campaign in campaigns:
        accounts = held.get(campaign.campaign_id, {})
        partitions = accounts.keys() | {p for (c, p) in served if c == campaign.campaign_id}
        for partition in sorted(partitions):
            totals = [leases.held(key) for key in accounts.get(partition, [])]
            rows.append(
                LeaseRow(
                    campaign.campaign_id,
                    partition,
                    granted=sum(t.granted for t in totals),
                    returned=sum(t.returned for t in totals),
                    spent=served[(campaign.campaign_id, partition)],
                )
            )
    return rows


def _cap_rows(peaks: Sequence[CapPeak], decided: Sequence[Decision]) -> list[CapRow]:
    denied_by = Counter(
        (decision.payload["campaign_id"], decision.payload["detail"])
        for decision in decided
        if decision.reason == "frequency_cap"
    )
    return [
        CapRow(
            peak.campaign_id,
            peak.cap,
            peak.count,
            peak.user_id,
            # The worker names the cap in a denial's detail by `Cap.label`.
            denied_by[(peak.campaign_id, Cap(peak.cap.max, peak.cap.window_s * 1000).label)],
        )
        for peak in peaks
    ]


# Rendering.


def _share(part: int, whole: int) -> str:
    return "-" if not whole else f"{Decimal(part * 100) / whole:.1f}%"


def _window(seconds: int) -> str:
    for unit, size in (("h", 3_600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _day(day: int | None) -> str:
    if day is None:
        return "-"
    return datetime.fromtimestamp(day * DAY_MS // 1000, UTC).date().isoformat()


def _budget(spent: int, budget: int | None) -> str:
    if budget is None:
        return "-"
    return f"{from_micros(budget)} ({_share(spent, budget)})"


def render(summary: Summary) -> str:
    decided = summary.served + sum(summary.denied.values())
    outcomes = [["served", "", f"{summary.served:,}", _share(summary.served, decided)]]
    outcomes += [
        ["denied", reason, f"{count:,}", _share(count, decided)]
        for reason, count in summary.denied.items()
    ]
    outcomes.append(["total", "", f"{decided:,}", _share(decided, decided)])
    spend = [
        [
            row.campaign_id + ("" if row.active else " (paused)"),
            row.currency,
            row.cpm,
            f"{row.served:,}",
            from_micros(row.spent),
            _budget(row.spent, row.lifetime),
            _day(row.busiest_day),
            from_micros(row.busiest_day_spent),
            _budget(row.busiest_day_spent, row.daily),
            "-" if row.tables is None else from_micros(row.tables),
        ]
        for row in summary.spend
    ]
    caps = [
        [
            row.campaign_id,
            f"{row.cap.max} per {_window(row.cap.window_s)}",
            f"{row.peak}/{row.cap.max}",
            row.user_id or "-",
            f"{row.denied:,}",
            "EXCEEDED" if row.peak > row.cap.max else "ok",
        ]
        for row in summary.caps
    ]
    leases = [
        [
            row.campaign_id,
            str(row.partition),
            from_micros(row.granted),
            from_micros(row.returned),
            from_micros(row.spent),
            from_micros(row.remaining),
        ]
        for row in summary.leases
    ]
    letters = ", ".join(f"{reason} {count}" for reason, count in summary.dead_letters.items())
    sections = [
        f"decisions: {decided:,} for {summary.requests:,} valid distinct requests "
        "(read_committed: ad-served, ad-denied)",
        plain_table(["outcome", "reason", "count", "share"], outcomes, left={0, 1}),
        "",
        f"dead letters (ad-requests-dlq): {sum(summary.dead_letters.values())}"
        + (f" ({letters})" if letters else ""),
        f"duplicates: {summary.resent} requests re-sent, {summary.duplicates} decided twice",
        "",
        "spend against budget (exact, from the served events; tables: the worker's own)",
        plain_table(
            [
                "campaign",
                "cur",
                "cpm",
                "served",
                "spent",
                "lifetime budget",
                "busiest UTC day",
                "spent that day",
                "daily budget",
                "tables",
            ],
            spend,
            left={0, 1, 6},
        ),
        "",
        "frequency caps: the most ads one user got in any window of each cap",
        plain_table(["campaign", "cap", "peak", "user", "denied", ""], caps, left={0, 1, 3, 5}),
        "",
    ]
    if leases:
        sections += [
            "budget leases per deciding partition (budget-leases; spent: its served events)",
            plain_table(
                ["campaign", "partition", "granted", "returned", "spent", "remaining"],
                leases,
                left={0},
            ),
            "",
        ]
    if summary.ok:
        tables = any(row.tables is not None for row in summary.spend)
        sections.append(
            "invariants held: exactly one decision per request, no cap or budget exceeded"
            + (", no lease overspent or overgranted" if summary.leases else "")
            + (
                ",\n  the worker's tables hold exactly the spend of the served events"
                if tables
                else ""
            )
        )
    else:
        sections.append("INVARIANTS BROKEN:")
        sections.extend(f"  - {violation}" for violation in summary.violations)
    return "\n".join(sections)
