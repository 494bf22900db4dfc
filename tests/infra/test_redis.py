"""The Redis server is real: values, TTLs and pipelines round-trip."""

from __future__ import annotations

import redis.asyncio as aioredis


async def test_redis_round_trip(redis_url: str, unique_name: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(f"{unique_name}:a", b"1", ex=30)
            pipe.incrby(f"{unique_name}:counter", 5)
            pipe.incrby(f"{unique_name}:counter", 7)
            await pipe.execute()
        assert await client.get(f"{unique_name}:a") == b"1"
        assert await client.get(f"{unique_name}:counter") == b"12"
        ttl = await client.ttl(f"{unique_name}:a")
        assert 0 < ttl <= 30
    finally:
        await client.aclose()
