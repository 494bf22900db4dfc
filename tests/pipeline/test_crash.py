"""A worker killed with SIGKILL mid-stream and restarted: exactly one decision per request
for read_committed readers, no cap or budget exceeded, and the tables' spend equal to the
sum of served costs."""

from __future__ import annotations

import asyncio
import random
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from infra.provision import Services
from models.money import to_micros
from streams.invariants import budget_violations, cap_violations, spend_by_campaign
from tests.pipeline.harness import BASE_MS, Deployment, campaign, request

REQUESTS = 3000
USERS = 150


@pytest.fixture
async def rocksdb_deployment(services: Services, tmp_path: Path) -> AsyncIterator[Deployment]:
    async with Deployment(
        services.kafka_bootstrap_servers, services.redis_url, tmp_path, store="rocksdb"
    ) as deployed:
        yield deployed


async def test_sigkill_mid_stream_then_restart(rocksdb_deployment: Deployment, ad_url: str) -> None:
    deployment = rocksdb_deployment
    campaigns = {
        c.campaign_id: c
        for c in (
            campaign(ad_url, caps=[(2, 3600), (3, 86_400)], lifetime="4.00"),
            campaign(ad_url, caps=[(1, 600)], daily="1.50", cpm="3.333"),
            campaign(ad_url, lifetime="2.50", anonymous_policy="uncapped"),
        )
    }
    await deployment.load(*campaigns.values())
    rng = random.Random(7)
    ids = list(campaigns)
    requests = [
        request(
            rng.choice(ids),
            BASE_MS + i * 20_000,  # 3000 requests over ~17 hours of event time
            None if rng.random() < 0.1 else f"user-{rng.randrange(USERS)}",
        )
        for i in range(REQUESTS)
    ]

    async def publish_steadily() -> None:
        for start in range(0, REQUESTS, 100):
            await deployment.publish(*requests[start : start + 100])
            await asyncio.sleep(0.05)

    publisher = asyncio.create_task(publish_steadily())
    await deployment.until(lambda: len(deployment.decisions) >= REQUESTS // 4, 60)
    worker = deployment.workers[0]
    assert worker.stop(signal.SIGKILL) == -signal.SIGKILL
    decided_at_kill = len(deployment.decisions)
    assert decided_at_kill < REQUESTS  # the kill really was mid-stream
    await deployment.add_worker(index=0)  # same data directory: RocksDB state and offsets
    await publisher
    decisions = await deployment.decided([r.context.request_id for r in requests], 120)

    assert await deployment.settled()  # no duplicate can arrive after this
    assert deployment.duplicates == []
    assert len(decisions) == REQUESTS
    served = [d for d in decisions if d.topic == "served"]
    violations = cap_violations(served, campaigns)
    if violations:
        for decision in served:
            if decision.payload["user_id"] == violations[0].split("/")[0]:
                print(decision.offset, decision.payload)
    assert violations == []
    assert budget_violations(served, campaigns) == []
    by_campaign = spend_by_campaign(served)
    for campaign_id in campaigns:
        state = await deployment.state(campaign_id)
        assert state.spend is not None
        assert state.spend.lifetime == by_campaign.get(campaign_id, 0)
    # The budgets were small enough to run out: the test exercised the limits.
    denied = {d.reason for d in decisions if d.topic == "denied"}
    assert {"frequency_cap", "budget_exhausted", "anonymous"} <= denied
    assert sum(by_campaign.values()) <= to_micros("4.00") + to_micros("2.50") + 17 * 1_500_000


async def test_sigterm_stops_cleanly_and_keeps_local_state(
    rocksdb_deployment: Deployment, ad_url: str
) -> None:
    deployment = rocksdb_deployment
    rules = campaign(ad_url, caps=[(2, 3600)])
    await deployment.load(rules)
    first = [request(rules.campaign_id, BASE_MS + i, "graceful") for i in range(2)]
    assert [d.topic for d in await deployment.decided(await deployment.publish(*first))] == [
        "served",
        "served",
    ]
    worker = deployment.workers[0]
    assert worker.stop(signal.SIGTERM) == 0
    log = worker.log_path.read_text()
    assert "worker stopped cleanly" in log
    await deployment.add_worker(index=0)
    (after,) = await deployment.decided(
        await deployment.publish(request(rules.campaign_id, BASE_MS + 2, "graceful"))
    )
    assert after.reason == "frequency_cap"
    # The second worker reused the state on disk: its restore had nothing to read.
    restores = re.findall(r"restore streamed (\d+) ", deployment.workers[-1].log_path.read_text())
    assert restores[-1] == "0"
