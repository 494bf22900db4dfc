"""The Redis lookaside cache: keys without per-request macros, Cache-Control, Redis down."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as redis

from infra.redis_server import RedisServer
from models.context import SessionContext
from streams.vast import ResponseCache, VastUpstream
from streams.vast.cache import cache_ttl
from tests.upstream import VastServer, inline, vast, wrapper


@pytest.fixture
async def cache(redis_url: str) -> AsyncIterator[ResponseCache]:
    cache = ResponseCache.from_url(redis_url, prefix=f"test:{uuid.uuid4().hex}:")
    yield cache
    await cache.aclose()


def fresh_context() -> SessionContext:
    return SessionContext.create({"user_id": "u"})


async def test_a_response_is_reused_across_requests_and_cachebusters(
    server: VastServer, cache: ResponseCache
) -> None:
    end = server.add(vast(inline(impression="http://p.invalid/i?cb=[CACHEBUSTING]")))
    root = server.add(vast(wrapper(end + "?cb=[CACHEBUSTING]")))
    first_context, second_context = fresh_context(), fresh_context()
    assert first_context.cachebusting != second_context.cachebusting

    async with VastUpstream(cache=cache, cache_ttl=30) as upstream:
        first = await upstream.fetch(root + "?cb=[CACHEBUSTING]", context=first_context)
        second = await upstream.fetch(root + "?cb=[CACHEBUSTING]", context=second_context)

    assert (len(server.seen(root)), len(server.seen(end))) == (1, 1)
    assert [hop.cached for hop in first.chain] == [False, False]
    assert [hop.cached for hop in second.chain] == [True, True]
    # What is handed on keeps its macros; what the resolver requests is expanded per request.
    assert second.ads[0].impressions[-1] == "http://p.invalid/i?cb=[CACHEBUSTING]"
    assert second.ads[0].impressions == first.ads[0].impressions


async def test_params_other_than_per_request_ones_are_part_of_the_key(
    server: VastServer, cache: ResponseCache
) -> None:
    url = server.add(vast(inline()))
    async with VastUpstream(cache=cache) as upstream:
        for placement in ("a", "b", "a"):
            await upstream.fetch(url, context=fresh_context(), params={"placement": placement})
    assert [seen.query for seen in server.seen(url)] == ["placement=a", "placement=b"]


@pytest.mark.parametrize(
    "cache_control", ["no-store", "private, max-age=60", "no-cache", "max-age=0"]
)
async def test_responses_marked_uncacheable_are_not_stored(
    server: VastServer, cache: ResponseCache, cache_control: str
) -> None:
    url = server.add(vast(inline()), headers={"Cache-Control": cache_control})
    async with VastUpstream(cache=cache) as upstream:
        for _ in range(2):
            assert (await upstream.fetch(url, context=fresh_context())).status == "inline"
    assert len(server.seen(url)) == 2


async def test_empty_responses_are_not_stored(server: VastServer, cache: ResponseCache) -> None:
    url = server.add(vast())
    async with VastUpstream(cache=cache) as upstream:
        for _ in range(2):
            assert (await upstream.fetch(url, context=fresh_context())).status == "no_ad"
    assert len(server.seen(url)) == 2


async def test_the_ttl_is_the_upstreams_shortened_by_max_age(
    server: VastServer, cache: ResponseCache, redis_url: str
) -> None:
    url = server.add(vast(inline()), headers={"Cache-Control": "public, max-age=5"})
    async with VastUpstream(cache=cache, cache_ttl=60) as upstream:
        await upstream.fetch(url, context=fresh_context())
    client = redis.Redis.from_url(redis_url)
    try:
        ttl_ms = await client.pttl(cache.key(url))
    finally:
        await client.aclose()
    assert 4000 < ttl_ms <= 5000


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, 60.0),
        ("public", 60.0),
        ("max-age=10", 10.0),
        ("max-age=600", 60.0),
        ("max-age=10, s-maxage=20", 20.0),
        ("no-store", None),
        ("No-Cache", None),
        ("private", None),
        ("max-age=0", None),
    ],
)
def test_cache_ttl(header: str | None, expected: float | None) -> None:
    assert cache_ttl(header, 60.0) == expected


def test_the_key_leaves_out_per_request_macros() -> None:
    cache = ResponseCache.from_url("redis://127.0.0.1:1")
    tag = "http://a.invalid/vast?cb=[CACHEBUSTING]&t=%%TIMESTAMP%%&c=[CORRELATOR]"
    assert cache.key(tag) == cache.key("http://a.invalid/vast?cb=&t=&c=")
    assert cache.key(tag, {"placement": "x", "CACHEBUSTING": "1"}) == cache.key(
        tag, {"placement": "x", "cachebusting": "2"}
    )
    assert cache.key(tag, {"placement": "x"}) != cache.key(tag, {"placement": "y"})
    assert cache.key(tag + "&d=[DOMAIN]") != cache.key(tag)


async def test_redis_down_is_a_miss_and_the_cache_refills_when_it_is_back(
    server: VastServer, tmp_path: Path
) -> None:
    redis_server = RedisServer(tmp_path / "data", tmp_path / "logs")
    await asyncio.to_thread(redis_server.start)
    cache = ResponseCache.from_url(redis_server.url, retry_after=0.2)
    url = server.add(vast(inline()))
    try:
        async with VastUpstream(cache=cache) as upstream:
            await upstream.fetch(url, context=fresh_context())
            assert (await upstream.fetch(url, context=fresh_context())).chain[0].cached

            await asyncio.to_thread(redis_server.stop)
            started = time.perf_counter()
            down = [await upstream.fetch(url, context=fresh_context()) for _ in range(5)]
            assert time.perf_counter() - started < 1.0
            assert [(r.status, r.chain[0].cached) for r in down] == [("inline", False)] * 5
            assert len(server.seen(url)) == 6

            await asyncio.to_thread(redis_server.start)  # same port, empty
            await asyncio.sleep(0.25)  # past retry_after
            await upstream.fetch(url, context=fresh_context())
            back = await upstream.fetch(url, context=fresh_context())
            assert back.chain[0].cached
            assert len(server.seen(url)) == 7
    finally:
        await cache.aclose()
        await asyncio.to_thread(redis_server.stop)
