"""The worker's status page (`/adstream/status/`) and its JSON (`/adstream/status.json`):
what it owns, its lag, its campaigns' spend against budget, its decisions per second and its
upstreams' breakers. Money is a decimal string with its currency, never raw micros."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from importlib import resources

import msgspec

from models.money import from_micros
from streams.worker.status import CampaignStatus, WorkerStatus

PAGE = resources.files(__package__).joinpath("status.html").read_text()
"""One self-contained page (inline script and SVG, no external assets) that polls the JSON."""


class Money(msgspec.Struct, frozen=True):
    amount: str
    """A decimal, e.g. "2.50"."""
    currency: str


class CampaignView(msgspec.Struct, frozen=True):
    campaign_id: str
    version: int
    active: bool
    cost: Money
    """One impression."""
    spent: Money
    budget: Money | None
    remaining: Money | None
    day: str | None
    """The newest UTC day of event time with spend (ISO date), which `spent_on_day` is of."""
    spent_on_day: Money
    daily_budget: Money | None
    remaining_on_day: Money | None


class PartitionView(msgspec.Struct, frozen=True):
    topic: str
    partition: int
    position: int | None
    end: int | None
    lag: int | None
    committed: int | None


class EndpointView(msgspec.Struct, frozen=True):
    endpoint: str
    open: bool
    timeouts: int


class StatusView(msgspec.Struct, frozen=True):
    group: str
    at: str
    """When this was read (UTC, wall clock)."""
    partitions: list[PartitionView]
    campaigns: list[CampaignView]
    decisions: dict[str, int]
    """Since the worker started, by reason (`served` for the served ones)."""
    decisions_per_second: dict[str, float]
    """Over about the last 10 seconds."""
    endpoints: list[EndpointView]
    open_endpoints: int


def _money(micros: int | None, currency: str) -> Money | None:
    return None if micros is None else Money(from_micros(micros), currency)


def campaign_view(status: CampaignStatus) -> CampaignView:
    def money(micros: int) -> Money:
        return Money(from_micros(micros), status.currency)

    day = None
    if status.day is not None:
        day = (datetime.date(1970, 1, 1) + datetime.timedelta(days=status.day)).isoformat()
    return CampaignView(
        campaign_id=status.campaign_id,
        version=status.version,
        active=status.active,
        cost=money(status.cost),
        spent=money(status.spent),
        budget=_money(status.budget, status.currency),
        remaining=_money(status.remaining, status.currency),
        day=day,
        spent_on_day=money(status.spent_on_day),
        daily_budget=_money(status.daily_budget, status.currency),
        remaining_on_day=_money(status.remaining_on_day, status.currency),
    )


def status_view(
    group: str,
    at: datetime.datetime,
    status: WorkerStatus,
    decisions: Mapping[str, int],
    per_second: Mapping[str, float],
) -> StatusView:
    return StatusView(
        group=group,
        at=at.astimezone(datetime.UTC).isoformat(timespec="seconds"),
        partitions=[
            PartitionView(p.topic, p.partition, p.position, p.end, p.lag, p.committed)
            for p in status.partitions
        ],
        campaigns=[campaign_view(campaign) for campaign in status.campaigns],
        decisions=dict(sorted(decisions.items())),
        decisions_per_second={
            reason: round(rate, 3) for reason, rate in sorted(per_second.items())
        },
        endpoints=[EndpointView(*endpoint) for endpoint in status.endpoints],
        open_endpoints=status.open_endpoints,
    )
