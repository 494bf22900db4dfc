"""Faust's stall monitor sees adstream's commits: a busy worker that commits is not logged
as stalled.

adstream commits offsets in its own transactions (`streams.worker.commit_protocol.Committer`),
past the bookkeeping Faust's monitor reads; a worker that had run `ADSTREAM_STALL_WARNING_S`
(default 5 minutes) with requests waiting logged "Has not committed ..." errors many times a
second, 17,000 in the first 11 minutes of a big run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from infra.provision import Services
from tests.pipeline.harness import BASE_MS, Deployment, campaign, request

STALL_WARNING_S = 8.0
"""Faust counts from the worker's start, restore included: on a busy 2-core machine the
first commit came 5 s after it."""
BACKLOG = 10_000
"""Requests published at once: seconds of work, beyond the stall warning's threshold."""


@pytest.fixture
async def impatient_deployment(services: Services, tmp_path: Path) -> AsyncIterator[Deployment]:
    async with Deployment(
        services.kafka_bootstrap_servers,
        services.redis_url,
        tmp_path,
        extra_env={"ADSTREAM_STALL_WARNING_S": str(STALL_WARNING_S)},
    ) as deployed:
        yield deployed


async def test_a_worker_working_off_a_backlog_is_not_reported_stalled(
    impatient_deployment: Deployment, ad_url: str
) -> None:
    deployment = impatient_deployment
    offer = campaign(ad_url)
    await deployment.load(offer)
    requests = [request(offer.campaign_id, BASE_MS + i, f"user-{i}") for i in range(BACKLOG)]
    decided = await deployment.decided(await deployment.publish(*requests), timeout_s=120)
    assert len(decided) == BACKLOG

    log = deployment.workers[0].log_path.read_text()
    assert "Has not committed" not in log
