"""What one worker holds and how it is doing, read when asked: for `/metrics` and the status
page alike, so that both always say the same.

A campaign's budget is spent through leases, one per deciding partition: each worker reports
what the leases of the partitions it owns have spent (a table keeps what it held of
partitions that moved away, which must not count twice), so the sum over workers is the
campaign's spend.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

import faust
import msgspec
from faust.exceptions import ConsumerNotStarted
from faust.types import TP

from streams.state import spend
from streams.state.campaigns import CampaignRules
from streams.state.spend import Spend
from streams.topics import Topics
from streams.vast.breaker import CircuitBreaker, EndpointState
from streams.worker.campaign_view import CampaignView
from streams.worker.kafka_transport import fetch_positions
from streams.worker.tables import Tables

MAX_REPORTED_ENDPOINTS = 20
"""Breaker states reported per endpoint at most (open ones first): wrappers can name any URL,
and a label per URL would grow without bound."""


class PartitionStatus(msgspec.Struct, frozen=True):
    topic: str
    partition: int
    position: int | None
    """The consumer's fetch position (None before its first fetch)."""
    end: int | None
    """The partition's end as the worker's read_committed consumer last saw it."""
    committed: int | None
    """The offset this worker committed last (None before its first commit)."""

    @property
    def lag(self) -> int | None:
        """Records committed to the partition and not fetched yet."""
        if self.position is None or self.end is None:
            return None
        return max(0, self.end - self.position)


class CampaignStatus(msgspec.Struct, frozen=True):
    """A campaign in force and its spend, in integer micros of `currency`."""

    campaign_id: str
    version: int
    active: bool
    currency: str
    cost: int
    """One impression."""
    spent: int
    """Lifetime."""
    budget: int | None
    """Lifetime; None when unlimited."""
    day: int | None
    """The newest UTC day of event time with spend (the daily budget's current day)."""
    spent_on_day: int
    daily_budget: int | None

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else max(0, self.budget - self.spent)

    @property
    def remaining_on_day(self) -> int | None:
        return None if self.daily_budget is None else max(0, self.daily_budget - self.spent_on_day)


class WorkerStatus(msgspec.Struct, frozen=True):
    partitions: list[PartitionStatus]
    """The worker's assigned partitions of its source topics."""
    campaigns: list[CampaignStatus]
    endpoints: list[EndpointState]
    """Upstream endpoints with timeouts, at most `MAX_REPORTED_ENDPOINTS`."""
    open_endpoints: int
    """Endpoints with an open breaker, all of them."""


def campaign_spend(tables: Tables, campaign_id: str, owned: Iterable[int]) -> Spend:
    """What the leases of a campaign on the partitions `owned` have spent: the one place it
    is read for reports (a key read per partition, never a scan of the table)."""
    return spend.total(lease.spend() for lease in tables.leases_at(campaign_id, owned))


def campaign_status(rules: CampaignRules, spent: Spend) -> CampaignStatus:
    day = max(spent.daily, default=None)
    return CampaignStatus(
        campaign_id=rules.campaign_id,
        version=rules.version,
        active=rules.active,
        currency=rules.currency,
        cost=rules.cost_micros,
        spent=spent.lifetime,
        budget=rules.lifetime_micros,
        day=day,
        spent_on_day=0 if day is None else spent.on_day(day),
        daily_budget=rules.daily_micros,
    )


def owned_campaigns(tables: Tables, view: CampaignView, owned: set[int]) -> list[CampaignStatus]:
    """The campaigns in force, by id, with what the leases of the partitions `owned` spent."""
    return [
        campaign_status(rules, campaign_spend(tables, campaign_id, owned))
        for campaign_id, rules in sorted(view.rules.items())
    ]


def partition_statuses(
    app: faust.App, topics: Iterable[str], committed: Mapping[TP, int]
) -> list[PartitionStatus]:
    """Where the worker stands in each assigned partition of `topics`."""
    consumer = app.consumer
    return [
        PartitionStatus(tp.topic, tp.partition, position, consumer.highwater(tp), committed.get(tp))
        for tp, position in sorted(fetch_positions(app, topics).items())
    ]


def breaker_states(breaker: CircuitBreaker | None) -> tuple[list[EndpointState], int]:
    if breaker is None:
        return [], 0
    return breaker.states(MAX_REPORTED_ENDPOINTS), breaker.open_count()


def worker_status(
    app: faust.App,
    tables: Tables,
    view: CampaignView,
    topics: Topics,
    committed: Mapping[TP, int],
    breaker: CircuitBreaker | None,
) -> WorkerStatus:
    sources = (topics.requests, topics.leases, topics.campaigns)
    try:
        assigned = app.consumer.assignment()
        positions = partition_statuses(app, sources, committed)
    except ConsumerNotStarted:  # asked while the worker starts
        assigned, positions = set(), []
    owned = {tp.partition for tp in assigned if tp.topic == topics.requests}
    endpoints, open_endpoints = breaker_states(breaker)
    return WorkerStatus(
        positions,
        owned_campaigns(tables, view, owned),
        endpoints,
        open_endpoints,
    )


class DecisionRates:
    """Decisions per second by reason over the last `window_s`, from samples of the running
    totals (taken once a second by the worker)."""

    def __init__(self, started: float, window_s: float = 10.0) -> None:
        """`started`: when the totals were all zero (the worker's start)."""
        self.window_s = window_s
        self._samples: deque[tuple[float, dict[str, int]]] = deque([(started, {})])

    def observe(self, at: float, totals: Mapping[str, int]) -> None:
        self._samples.append((at, dict(totals)))
        while len(self._samples) > 2 and at - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    def per_second(self) -> dict[str, float]:
        if len(self._samples) < 2:
            return {}
        (first_at, first), (last_at, last) = self._samples[0], self._samples[-1]
        elapsed = last_at - first_at
        if elapsed <= 0:
            return {}
        return {reason: (count - first.get(reason, 0)) / elapsed for reason, count in last.items()}
