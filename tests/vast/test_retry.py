"""Retries: connect errors, timeouts and 5xx only, with backoff, inside the chain deadline."""

from __future__ import annotations

import socket
import time

import pytest

from models.context import SessionContext
from streams.vast import RetryMiddleware, RetryPolicy, VastUpstream
from tests.upstream import Reply, VastServer, inline, vast

QUICK = RetryPolicy(max_retries=3, backoff=0.01, max_backoff=0.02)


async def test_5xx_is_retried_until_it_succeeds(
    server: VastServer, context: SessionContext
) -> None:
    url = server.add(
        [Reply(b"", status=503), Reply(b"", status=502), Reply(vast(inline()).encode())]
    )
    async with VastUpstream(retry=QUICK) as upstream:
        result = await upstream.fetch(url, context=context)
    assert result.status == "inline"
    assert len(server.seen(url)) == 3
    assert (result.chain[0].status, result.chain[0].attempts) == (200, 3)


@pytest.mark.parametrize("status", [400, 403, 404, 410])
async def test_4xx_is_not_retried(server: VastServer, context: SessionContext, status: int) -> None:
    url = server.add([Reply(b"", status=status), Reply(vast(inline()).encode())])
    async with VastUpstream(retry=QUICK) as upstream:
        result = await upstream.fetch(url, context=context)
    assert (result.status, result.error_code) == ("error", 301)
    assert len(server.seen(url)) == 1
    assert (result.chain[0].status, result.chain[0].attempts) == (status, 1)


async def test_a_bad_document_is_not_retried(server: VastServer, context: SessionContext) -> None:
    url = server.add([Reply(b"<VAST"), Reply(vast(inline()).encode())])
    async with VastUpstream(retry=QUICK) as upstream:
        result = await upstream.fetch(url, context=context)
    assert result.error_code == 100
    assert len(server.seen(url)) == 1


async def test_retries_stop_at_max_retries(server: VastServer, context: SessionContext) -> None:
    url = server.add(b"", status=500)
    async with VastUpstream(retry=RetryPolicy(max_retries=2, backoff=0.01)) as upstream:
        result = await upstream.fetch(url, context=context)
    assert result.error_code == 301
    assert len(server.seen(url)) == 3
    assert (result.chain[0].status, result.chain[0].attempts) == (500, 3)


async def test_a_refused_connection_is_retried(context: SessionContext) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound but not listening: connections are refused
        async with VastUpstream(retry=QUICK, fire_error_pixels=False) as upstream:
            result = await upstream.fetch(f"http://127.0.0.1:{port}/vast", context=context)
    assert result.error_code == 301
    assert (result.chain[0].status, result.chain[0].attempts) == (0, 4)


async def test_a_timeout_is_retried(server: VastServer, context: SessionContext) -> None:
    url = server.add([Reply(b"", delay=2.0), Reply(vast(inline()).encode())])
    async with VastUpstream(hop_timeout=0.2, retry=QUICK) as upstream:
        result = await upstream.fetch(url, context=context)
    assert result.status == "inline"
    assert result.chain[0].attempts == 2


async def test_no_retry_without_a_policy(server: VastServer, context: SessionContext) -> None:
    url = server.add([Reply(b"", status=503), Reply(vast(inline()).encode())])
    async with VastUpstream() as upstream:
        result = await upstream.fetch(url, context=context)
    assert result.error_code == 301
    assert len(server.seen(url)) == 1


async def test_retry_middleware_as_in_the_session_guide(
    server: VastServer, context: SessionContext
) -> None:
    url = server.add([Reply(b"", status=503), Reply(vast(inline()).encode())])
    async with VastUpstream(url) as upstream:
        retrying = RetryMiddleware(upstream=upstream, max_retries=3)
        result = await retrying.fetch(params={"placement_id": "p"}, context=context)
    assert result.status == "inline"
    assert result.chain[0].attempts == 2
    assert retrying.policy.max_retries == 3


async def test_a_backoff_past_the_deadline_is_not_waited_for(
    server: VastServer, context: SessionContext
) -> None:
    url = server.add(b"", status=503)
    slow_backoff = RetryPolicy(max_retries=5, backoff=10.0, max_backoff=10.0)
    async with VastUpstream(timeout=1.0, retry=slow_backoff) as upstream:
        started = time.perf_counter()
        result = await upstream.fetch(url, context=context)
        elapsed = time.perf_counter() - started
    assert result.error_code == 301
    assert elapsed < 1.1
    assert result.chain[0].attempts <= 2


def test_backoff_grows_exponentially_with_full_jitter() -> None:
    policy = RetryPolicy(backoff=0.1, max_backoff=0.5)
    for retry, bound in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.5), (10, 0.5)]:
        delays = [policy.delay(retry) for _ in range(200)]
        assert all(0.0 <= delay <= bound for delay in delays)
        assert max(delays) > bound * 0.8  # jitter spreads over the whole range
        assert min(delays) < bound * 0.2
