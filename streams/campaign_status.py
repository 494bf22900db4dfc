"""What `adstream campaigns list|show` reports: each campaign's rules in force and its spend
against its budgets. Pure: the records come in from `streams.committed_reader`.

Each part of a campaign's status is folded from its own topic (rules from `campaigns`, spend
from `ad-served`) and joined by campaign_id in `statuses`; a further part (the budget leases)
joins the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from models.codec import InvalidEvent, decode_campaign_record
from models.events import Campaign
from models.money import MoneyError, from_micros, to_micros
from streams.state.spend import MS_PER_DAY, utc_day


class InForce(msgspec.Struct, frozen=True):
    campaign: Campaign
    version: int
    """Offset of its record in `campaigns`: the `campaign_version` its decisions name."""


class CampaignsInForce:
    """The configuration in force per campaign_id, as the workers apply the `campaigns`
    topic: the latest valid record wins, an invalid one changes nothing, a tombstone
    deletes."""

    def __init__(self) -> None:
        self.in_force: dict[str, InForce] = {}

    def add(self, key: bytes | None, value: bytes | None, offset: int) -> None:
        campaign_id = (key or b"").decode(errors="replace")
        if value is None:
            self.in_force.pop(campaign_id, None)
            return
        try:
            campaign = decode_campaign_record(campaign_id, value)
        except InvalidEvent:
            return
        self.in_force[campaign_id] = InForce(campaign, offset)


class _Served(msgspec.Struct):
    campaign_id: str
    cost: str
    timestamp: int


class Spent(msgspec.Struct):
    served: int = 0
    lifetime: int = 0
    """Micros."""
    today: int = 0
    """Micros, served on today's UTC day of event time."""


class SpendTally:
    """The cost of every served decision per campaign, lifetime and today (UTC, event time);
    integer micros, exact."""

    def __init__(self, now_ms: int) -> None:
        self.today = utc_day(now_ms)
        self.spent: dict[str, Spent] = {}
        self.unreadable = 0

    def add(self, value: bytes | None) -> None:
        try:
            event = msgspec.json.decode(value or b"", type=_Served)
            cost = to_micros(event.cost)
        except (msgspec.DecodeError, MoneyError):
            self.unreadable += 1
            return
        spent = self.spent.setdefault(event.campaign_id, Spent())
        spent.served += 1
        spent.lifetime += cost
        if utc_day(event.timestamp) == self.today:
            spent.today += cost


class Budget(msgspec.Struct, frozen=True):
    """Decimal strings in the campaign's currency; None where there is no limit."""

    budget: str | None
    spent: str
    remaining: str | None


class SpendStatus(msgspec.Struct, frozen=True):
    currency: str
    served: int
    lifetime: Budget
    today: Budget
    day: str
    """Today's UTC date (ISO), the day `today` counts."""


class CampaignStatus(msgspec.Struct, frozen=True):
    campaign_id: str
    version: int
    active: bool
    config: Campaign
    """The configuration in force, as published."""
    spend: SpendStatus


def statuses(in_force: CampaignsInForce, tally: SpendTally) -> list[CampaignStatus]:
    """Every campaign in force, by campaign_id."""
    day = datetime.fromtimestamp(tally.today * MS_PER_DAY // 1000, UTC).date().isoformat()
    found = []
    for campaign_id in sorted(in_force.in_force):
        entry = in_force.in_force[campaign_id]
        campaign = entry.campaign
        spent = tally.spent.get(campaign_id, Spent())
        spend = SpendStatus(
            campaign.currency,
            spent.served,
            _against(campaign.budget.lifetime, spent.lifetime),
            _against(campaign.budget.daily, spent.today),
            day,
        )
        found.append(CampaignStatus(campaign_id, entry.version, campaign.active, campaign, spend))
    return found


def _against(budget: str | None, spent_micros: int) -> Budget:
    if budget is None:
        return Budget(None, from_micros(spent_micros), None)
    # Spend never passes a budget, but a budget lowered after the spend can be below it.
    remaining = max(to_micros(budget) - spent_micros, 0)
    return Budget(budget, from_micros(spent_micros), from_micros(remaining))
