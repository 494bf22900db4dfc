"""A worker with something of everything to report, for the tests of what operators see
(`/metrics`, the dashboard's queries): served ads, budget denials, and an upstream slow
enough to time out and trip its breaker. Event times are now, so latencies are real."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
from prometheus_client.parser import text_string_to_metric_families

from infra.provision import Services
from models.events import Campaign
from tests.pipeline.harness import Deployment, campaign, request
from tests.upstream import VastServer, inline, vast

ENV = {
    "ADSTREAM_HOP_TIMEOUT_S": "0.3",
    "ADSTREAM_CHAIN_TIMEOUT_S": "0.6",
    "ADSTREAM_BREAKER_TIMEOUTS": "2",
    "ADSTREAM_BREAKER_MIN_FAILING_S": "0",
}
"""Upstream timeouts short, and a breaker opening on two of them in a row."""
SERVED = 4
"""A budget of four impressions (CPM 2.50: 0.0025 each)."""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@contextlib.asynccontextmanager
async def deployed(services: Services, folder: Path) -> AsyncIterator[Deployment]:
    """A worker with the short upstream timeouts and eager breaker of `ENV`."""
    async with Deployment(
        services.kafka_bootstrap_servers, services.redis_url, folder, extra_env=ENV
    ) as deployment:
        yield deployment


class Traffic(msgspec.Struct):
    budgeted: Campaign
    slow: Campaign
    slow_url: str
    users: list[str]


async def scrape(url: str) -> Samples:
    async with httpx.AsyncClient(timeout=5.0) as client:
        response = await client.get(url)
    response.raise_for_status()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def named(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (key, labels), value in samples.items() if key == name}


async def breaker_states(deployment: Deployment) -> dict[str, float]:
    """Endpoint -> 1 (open) or 0 (timing out), as the worker's `/metrics` shows them."""
    samples = await scrape(deployment.alive_worker().url("/metrics"))
    return {
        dict(labels)["endpoint"]: value
        for labels, value in named(samples, "adstream_upstream_breaker_open").items()
    }


async def make_traffic(deployment: Deployment, vast_server: VastServer) -> Traffic:
    """Decide `SERVED` ads and two budget denials, dead-letter a message, then send requests
    to the slow upstream until its breaker is open (a timeout noticed late by a busy loop
    does not count)."""
    slow_url = vast_server.add(vast(inline()), delay=3.0, name="slow.xml")
    budgeted = campaign(vast_server.add(vast(inline())), lifetime="0.01", daily="1.00")
    slow = campaign(slow_url)
    await deployment.load(budgeted, slow)
    users = [f"observed-{n}" for n in range(SERVED + 2)]
    now_ms = int(time.time() * 1000)
    await deployment.decided(
        await deployment.publish(
            *(request(budgeted.campaign_id, now_ms + n, user) for n, user in enumerate(users))
        )
    )
    await deployment.publish_raw(b"not an ad request")
    await deployment.dead_lettered(1)
    deadline = time.monotonic() + 40
    while (await breaker_states(deployment)).get(slow_url) != 1:
        assert time.monotonic() < deadline, "the slow upstream's breaker never opened"
        at_ms = int(time.time() * 1000)
        await deployment.decided(
            await deployment.publish(
                *(request(slow.campaign_id, at_ms + n, f"slow-{n}") for n in range(2))
            )
        )
    return Traffic(budgeted, slow, slow_url, users)
