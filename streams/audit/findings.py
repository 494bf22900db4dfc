"""What the verifier takes in and gives back: plain Structs, free of Kafka and of formatting.

In: `Record`, one Kafka record as the replay read it. Out: `Summary`, the counts of what the
history holds and every `Violation` found, each naming the request it concerns and its kind.
Money is integer micros here; the rendering turns it into exact decimals.
"""

from __future__ import annotations

from typing import Literal, get_args

import msgspec

TopicKind = Literal["campaigns", "requests", "served", "denied", "leases"]

ViolationKind = Literal[
    "no_decision",
    "duplicate_decision",
    "decision_without_request",
    "decision_mismatch",
    "undecodable_decision",
    "wrong_version",
    "version_not_in_force",
    "wrong_cost",
    "cap_exceeded",
    "budget_exceeded",
    "should_have_denied",
    "implausible_denial",
    "lease_overspent",
    "lease_overgranted",
    "lease_invalid",
    "ledger_missing",
    "ledger_extra",
    "ledger_mismatch",
]
VIOLATION_KINDS: tuple[str, ...] = get_args(ViolationKind)
"""In the order reports list them."""

MEANING: dict[str, str] = {
    "no_decision": "a valid request got no decision",
    "duplicate_decision": "a request got more than one decision",
    "decision_without_request": "a decision for no valid request",
    "decision_mismatch": "a decision's copied fields differ from its request's",
    "undecodable_decision": "a record on ad-served/ad-denied that is no decision",
    "wrong_version": "campaign_version names no configuration of that campaign",
    "version_not_in_force": "campaign_version older than one already applied",
    "wrong_cost": "a served cost is not cpm/1000 or not in the campaign's currency",
    "cap_exceeded": "a user got more impressions than a frequency cap allows",
    "budget_exceeded": "a campaign spent more than a budget",
    "should_have_denied": "served although the configuration refuses the request",
    "implausible_denial": "a denial its configuration or the served history contradicts",
    "lease_overspent": "a partition served or reported more than its lease was granted",
    "lease_overgranted": "a campaign's leases granted more than its budget",
    "lease_invalid": "a budget-leases record unreadable, out of sequence or naming no budget",
    "ledger_missing": "a served charge is not in the ledger",
    "ledger_extra": "a ledger charge for no served decision",
    "ledger_mismatch": "a ledger charge differs from its served decision",
}


class Record(msgspec.Struct, frozen=True):
    """One record of a topic, as read (read_committed)."""

    partition: int
    offset: int
    timestamp: int
    """The record's timestamp (Unix ms): the event time, for adstream's topics."""
    key: bytes | None
    value: bytes | None


class Violation(msgspec.Struct, frozen=True):
    kind: ViolationKind
    request_id: str | None
    """None when no request id can be read (an undecodable decision) or the violation is a
    lease record's."""
    detail: str


class CampaignSpend(msgspec.Struct, frozen=True):
    """What a campaign's served decisions inside the window cost, in one currency."""

    campaign_id: str
    currency: str
    served: int
    micros: int


class LedgerSummary(msgspec.Struct, frozen=True):
    path: str
    charges: int
    """Charges in the ledger inside the window."""
    matched: int
    """Served decisions found charged once at the same cost."""
    unbilled: int
    """Served decisions past the offsets the ledger has read so far (billing lags; not wrong)."""
    beyond_replay: int
    """Charges for records past the end offsets this audit read (billed since it started)."""
    micros: dict[str, int]
    """Sum of the charges inside the window, per currency."""


class Summary(msgspec.Struct):
    window_start_ms: int | None
    window_end_ms: int | None
    records: dict[str, int]
    """Records read per topic kind (`campaigns`, `requests`, `served`, `denied`, `leases`)."""
    requests: int
    """Messages on ad-requests inside the window."""
    valid: int
    dead_lettered: dict[str, int]
    """Invalid requests (the DLQ's) by reason."""
    duplicates: int
    """Valid messages re-sending a request_id seen within 24 h of event time."""
    distinct: int
    """Valid requests that need a decision."""
    served: int
    denied: dict[str, int]
    """By reason, in `DenialReason`'s order; reasons that occurred only."""
    spend: list[CampaignSpend]
    violations: list[Violation]
    ledger: LedgerSummary | None = None

    @property
    def ok(self) -> bool:
        return not self.violations

    def by_kind(self) -> dict[str, int]:
        counts = {kind: 0 for kind in VIOLATION_KINDS}
        for violation in self.violations:
            counts[violation.kind] += 1
        return {kind: count for kind, count in counts.items() if count}
