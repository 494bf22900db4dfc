"""A real worker's `/metrics` after real traffic: event-time latency, lag per partition,
spend against budget per campaign, breaker states, `process_*`; no user id in any label."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from infra.provision import Services
from models.money import to_micros
from tests.pipeline import observed
from tests.pipeline.harness import Deployment
from tests.upstream import VastServer


@pytest.fixture(scope="module")
async def deployment(
    services: Services, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Deployment]:
    async with observed.deployed(services, tmp_path_factory.mktemp("metrics")) as deployment:
        yield deployment


async def test_metrics_after_traffic(deployment: Deployment, vast_server: VastServer) -> None:
    traffic = await observed.make_traffic(deployment, vast_server)
    url = deployment.alive_worker().url("/metrics")
    topics = deployment.topics
    sources = {topics.requests, topics.leases, topics.campaigns}
    deadline = time.monotonic() + 30
    while True:  # until every source partition is fetched to its end and committed
        samples = await observed.scrape(url)
        lag = observed.named(samples, "adstream_consumer_lag")
        committed = observed.named(samples, "adstream_committed_offset")
        if len(lag) == 3 * deployment.partitions and not any(lag.values()) and committed:
            break
        assert time.monotonic() < deadline, (lag, committed)
        await asyncio.sleep(0.2)
    assert {dict(labels)["topic"] for labels in lag} == sources

    budgeted = traffic.budgeted.campaign_id
    spend = observed.named(samples, "adstream_campaign_spend_micros")
    budget = observed.named(samples, "adstream_campaign_budget_micros")
    lifetime = (("campaign", budgeted), ("currency", "USD"), ("window", "lifetime"))
    assert spend[lifetime] == observed.SERVED * to_micros("0.0025") == to_micros("0.01")
    assert budget[lifetime] == to_micros("0.01")
    assert "adstream_campaign_remaining_micros" not in {name for name, _ in samples}
    slow_lifetime = (
        ("campaign", traffic.slow.campaign_id),
        ("currency", "USD"),
        ("window", "lifetime"),
    )
    assert spend[slow_lifetime] == 0 and slow_lifetime not in budget  # unlimited

    decisions = sum(observed.named(samples, "adstream_decisions_total").values())
    latency = observed.named(samples, "adstream_event_to_decision_seconds_count")
    assert latency[()] == decisions >= len(traffic.users) + 2
    # Event times are "now" at publishing: decisions come seconds later, not hours.
    assert (
        0 < observed.named(samples, "adstream_event_to_decision_seconds_sum")[()] < 60 * decisions
    )

    assert (
        observed.named(samples, "adstream_upstream_breaker_open")[(("endpoint", traffic.slow_url),)]
        == 1
    )
    assert observed.named(samples, "adstream_upstream_breakers_open")[()] == 1
    assert observed.named(samples, "adstream_upstream_errors_total")[(("code", "301"),)] >= 2
    assert observed.named(samples, "process_cpu_seconds_total")[()] > 0
    assert observed.named(samples, "process_resident_memory_bytes")[()] > 0
    labels = {value for (_, pairs) in samples for _, value in pairs}
    assert not labels & {*traffic.users, "slow-0", "slow-1"}
