"""A restarted worker restores its tables from the changelogs completely and without the
10 s wait Faust's recovery used to end on (`streams.worker.recovery`, item 10), and what it
restored ages out by event time like the rest."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from infra.provision import Services
from models.money import to_micros
from streams.state.frequency import ALLOWED_LATENESS_MS
from tests.pipeline.harness import BASE_MS, Deployment, campaign, request

RESTORE_S = 9.5
"""Start to ready with tables to restore. Before the fix, recovery alone took over 10 s: it
waited for the commit marker that ends every transactional changelog. Ready takes 2-5 s on a
quiet machine and passed 7 s on a busy one; the bound stays below the wait it guards against."""


HISTORY_S = 60
"""The impression history of these tests' workers: short, so restored state ages out soon."""


@pytest.fixture
async def memory_deployment(services: Services, tmp_path: Path) -> AsyncIterator[Deployment]:
    async with Deployment(
        services.kafka_bootstrap_servers,
        services.redis_url,
        tmp_path,
        extra_env={"ADSTREAM_IMPRESSION_HISTORY_S": str(HISTORY_S)},
    ) as deployed:
        yield deployed


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


async def test_restored_cap_state_still_ages_out(
    memory_deployment: Deployment, ad_url: str
) -> None:
    """The expiry index lives in memory: after a restart it is rebuilt from the restored
    tables, or restored keys would stay for good."""
    deployment = memory_deployment
    capped = campaign(ad_url, caps=[(1, HISTORY_S)])
    await deployment.load(capped)
    served = await deployment.decided(
        await deployment.publish(request(capped.campaign_id, BASE_MS, "user-old"))
    )
    assert served[0].topic == "served"

    assert deployment.workers[0].stop() == 0
    await deployment.add_worker(index=0)
    restored = await deployment.state(capped.campaign_id, "user-old")
    assert restored.cap is not None and restored.cap.times == [BASE_MS]

    # An event past the old impression's window, its history and the allowed lateness moves
    # the partition's watermark beyond the restored key's expiry.
    later = BASE_MS + HISTORY_S * 1000 + ALLOWED_LATENESS_MS + 1
    await deployment.decided(
        await deployment.publish(request(capped.campaign_id, later, "user-new"))
    )
    aged = await deployment.state(capped.campaign_id, "user-old")
    assert aged.cap is not None and aged.cap.times == []  # the key is gone
