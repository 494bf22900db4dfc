"""The Redis lookaside: written through by the worker, read by edges, never in the way.

Redis is stopped mid-stream: decisions are unchanged, the edge's client falls back to the
worker's web route, and once Redis is back the cache fills again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis

from infra.provision import Services
from infra.redis_server import RedisServer
from streams.lookaside import CapView, LookasideClient, cached_spend, cap_key, spend_key
from tests.pipeline.harness import BASE_MS, DAY_MS, Deployment, campaign, request


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(data_dir=tmp_path / "redis", log_dir=tmp_path / "logs")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def deployment_with_own_redis(
    services: Services, own_redis: RedisServer, tmp_path: Path
) -> AsyncIterator[Deployment]:
    async with Deployment(
        services.kafka_bootstrap_servers, own_redis.url, tmp_path / "deploy"
    ) as deployed:
        yield deployed


async def cached_total(url: str, key: str, timeout_s: float = 10.0) -> int:
    """The lifetime spend Redis holds for a campaign, summed over its partitions' leases, once
    it stops growing (the worker writes behind its decisions)."""
    client = aioredis.Redis.from_url(url)
    try:
        total, deadline = -1, time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            now = sum(view.lifetime for view in await cached_spend(client, key))
            if now == total:
                return total
            total = now
            await asyncio.sleep(0.3)
        return total
    finally:
        await client.aclose()


async def redis_value(url: str, key: str, timeout_s: float = 10.0) -> bytes | None:
    client = aioredis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = await client.get(key)
            if isinstance(value, bytes):
                return value
            await asyncio.sleep(0.1)
        return None
    finally:
        await client.aclose()


async def test_redis_down_mid_stream(
    deployment_with_own_redis: Deployment, own_redis: RedisServer, ad_url: str
) -> None:
    deployment = deployment_with_own_redis
    prefix = f"{deployment.name}-"
    rules = campaign(ad_url, caps=[(2, 3600)], lifetime="0.0125")  # 5 impressions in all
    await deployment.load(rules)
    t = BASE_MS + 13 * DAY_MS
    client = LookasideClient(own_redis.url, deployment.alive_worker().url(""), prefix=prefix)
    try:
        # Redis up: the worker writes caps and spend through.
        first = [request(rules.campaign_id, t + i, "alice") for i in range(3)]
        decided = await deployment.decided(await deployment.publish(*first))
        assert [d.topic for d in decided] == ["served", "served", "denied"]
        cached = await redis_value(own_redis.url, cap_key(prefix, rules.campaign_id, "alice"))
        assert cached is not None
        assert msgspec.json.decode(cached, type=CapView).times == [t, t + 1]
        assert await client.is_capped(rules.campaign_id, "alice", t + 2)
        assert not await client.is_capped(rules.campaign_id, "alice", t + 3_600_001)

        # Redis down: decisions go on, the same as they would have been.
        own_redis.stop()
        second = [request(rules.campaign_id, t + 10 + i, "bob") for i in range(3)]
        decided = await deployment.decided(await deployment.publish(*second))
        assert [d.topic for d in decided] == ["served", "served", "denied"]
        assert decided[2].reason == "frequency_cap"
        # The edge's client answers from the worker instead.
        assert await client.is_capped(rules.campaign_id, "bob", t + 12)
        assert not await client.is_exhausted(rules.campaign_id, t + 12)

        # Redis back (empty, same port): the next writes and the fallback fill it again.
        own_redis.start()
        last = request(rules.campaign_id, t + 20, "carol")
        (decision,) = await deployment.decided(await deployment.publish(last))
        assert decision.topic == "served"
        assert await cached_total(own_redis.url, spend_key(prefix, rules.campaign_id)) == 5 * 2500
        assert await client.is_exhausted(rules.campaign_id, t + 21)
        assert await client.is_capped(rules.campaign_id, "bob", t + 21)  # worker, then Redis
        assert await redis_value(own_redis.url, cap_key(prefix, rules.campaign_id, "bob"))
    finally:
        await client.aclose()
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(deployment.alive_worker().url("/metrics"))).text
    errors = [line for line in metrics.splitlines() if line.startswith("adstream_redis_errors")]
    assert errors and float(errors[0].split()[-1]) >= 1
