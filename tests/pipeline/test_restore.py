"""A restarted worker restores its tables from the changelogs completely and without the
10 s wait Faust's recovery used to end on (`streams.faust_patches`, item 10)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from infra.provision import Services
from models.money import to_micros
from tests.pipeline.harness import BASE_MS, Deployment, campaign, request

RESTORE_S = 7.0
"""Start to ready with tables to restore. Before the fix, recovery alone took over 10 s: it
waited for the commit marker that ends every transactional changelog."""


@pytest.fixture
async def memory_deployment(services: Services, tmp_path: Path) -> AsyncIterator[Deployment]:
    deployed = Deployment(services.kafka_bootstrap_servers, services.redis_url, tmp_path)
    await deployed.start()
    yield deployed
    await deployed.stop()


async def test_restart_restores_every_table_at_once(
    memory_deployment: Deployment, ad_url: str
) -> None:
    deployment = memory_deployment
    capped = campaign(ad_url, caps=[(1, 86_400)], lifetime="100.00")
    await deployment.load(capped)
    users = [f"user-{i}" for i in range(40)]
    first = [request(capped.campaign_id, BASE_MS + i, user) for i, user in enumerate(users)]
    decided = await deployment.decided(await deployment.publish(*first))
    assert all(d.topic == "served" for d in decided)

    # The memory store starts empty: every table comes back from its changelog.
    assert deployment.workers[0].stop() == 0
    started = time.monotonic()
    await deployment.add_worker(index=0)
    ready_s = time.monotonic() - started
    assert ready_s < RESTORE_S, f"restart to ready took {ready_s:.1f} s"

    state = await deployment.state(capped.campaign_id)
    assert state.known
    assert state.spend is not None
    assert state.spend.lifetime == len(users) * to_micros(capped.cpm) // 1000
    again = [request(capped.campaign_id, BASE_MS + 1000 + i, u) for i, u in enumerate(users)]
    decided = await deployment.decided(await deployment.publish(*again))
    assert {d.reason for d in decided} == {"frequency_cap"}
    assert deployment.duplicates == []
