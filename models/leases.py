"""The events on `budget-leases` (docs/design.md, "Budgets as leases"), as they travel.

A campaign's budget bank and the partitions that decide the campaign talk through these
records, keyed by campaign_id: asks and returns go to the bank (the partition the key hashes
to), grants and reclaims to the deciding partition they name. Money is a decimal string like
everywhere on the wire; `streams.state.leases` holds the same events in integer micros and
the rules that make them.

| type      | from -> to         | says                                                      |
| --------- | ------------------ | --------------------------------------------------------- |
| `ask`     | partition -> bank  | "grant me `want` more of this account"                    |
| `return`  | partition -> bank  | "I give back `amount` unspent" (0: a report of `spent`)   |
| `grant`   | bank -> partition  | "here is `amount` more" (0 with `dry`: "none is left")    |
| `reclaim` | bank -> partition  | "give back what you hold unspent"                         |

Each names the account it moves: `day` (UTC day number of event time) for a campaign with a
daily budget, null for the lifetime budget. Running totals (`granted`, `returned`, `spent`)
make every record self-contained, and `seq` numbers each direction of each (campaign,
partition), so a replay applies each record once and sees a gap.
"""

from __future__ import annotations

import msgspec

from models.events import SCHEMA_VERSION


class LeaseRecordBase(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    campaign_id: str
    partition: int
    """The deciding partition of `ad-requests` the lease belongs to."""
    seq: int


class LeaseAskRecord(LeaseRecordBase, frozen=True, tag="ask"):
    day: int | None
    want: str
    spent: str
    """The account's total spent on the partition."""
    watermark: int
    """The partition's newest event time (Unix ms) of the campaign."""
    schema: int = SCHEMA_VERSION


class LeaseReturnRecord(LeaseRecordBase, frozen=True, tag="return"):
    day: int | None
    amount: str
    returned: str
    """The account's total returned by the partition, this one included."""
    spent: str
    watermark: int
    closes: bool
    """The partition asks no more of this account for now; false when it gives back too
    little to spend while its ask stands."""
    schema: int = SCHEMA_VERSION


class LeaseGrantRecord(LeaseRecordBase, frozen=True, tag="grant"):
    day: int | None
    amount: str
    granted: str
    """The account's total granted to the partition, this one included."""
    version: int
    """The `campaigns` offset of the budget in force at the bank."""
    lifetime_limit: str | None
    daily_limit: str | None
    answers: int
    """The `seq` of the ask this answers."""
    dry: str | None
    """`lifetime`, `daily` or `daily (late)` when the partition still cannot cover one
    impression because the bank has nothing more to grant."""
    schema: int = SCHEMA_VERSION


class LeaseReclaimRecord(LeaseRecordBase, frozen=True, tag="reclaim"):
    version: int
    schema: int = SCHEMA_VERSION


LeaseRecord = LeaseAskRecord | LeaseReturnRecord | LeaseGrantRecord | LeaseReclaimRecord
