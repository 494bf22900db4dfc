"""Hostile upstreams: oversized and compressed bodies, redirects, schemes, SSRF, slowness."""

from __future__ import annotations

import gzip
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from models.context import SessionContext
from streams.vast import (
    BlockedAddress,
    DocumentError,
    InvalidUrl,
    ResponseTooLarge,
    TooManyRedirects,
    VastTransport,
    VastUpstream,
)
from tests.upstream import Handler, VastServer, inline, vast, wrapper

MIB = 1 << 20


@pytest.fixture
async def transport() -> AsyncIterator[VastTransport]:
    async with VastTransport() as transport:
        yield transport


@pytest.fixture
async def upstream() -> AsyncIterator[VastUpstream]:
    async with VastUpstream(fire_error_pixels=False) as upstream:
        yield upstream


def padded_vast(size: int) -> bytes:
    """A valid VAST document of exactly `size` bytes."""
    document = vast(inline()).encode()
    padding = b"<!--" + b"x" * (size - len(document) - 7) + b"-->"
    return document.replace(b"</VAST>", padding + b"</VAST>")


async def test_the_body_cap_is_exact(server: VastServer) -> None:
    async with VastTransport(max_body_bytes=4096) as transport:
        fits = await transport.get(server.add(padded_vast(4096)))
        assert len(fits.body) == 4096
        with pytest.raises(ResponseTooLarge) as raised:
            await transport.get(server.add(padded_vast(4097)))
    assert raised.value.code == 100


async def test_a_huge_declared_body_is_refused_before_reading(
    transport: VastTransport, server: VastServer
) -> None:
    with pytest.raises(ResponseTooLarge, match="Content-Length"):
        await transport.get(server.add(b"x" * (MIB + 1)))
    with pytest.raises(ResponseTooLarge, match="Content-Length"):  # compressed or not
        await transport.get(server.add(b"x" * (MIB + 1), headers={"Content-Encoding": "gzip"}))


async def stream_forever(request: web.Request) -> web.StreamResponse:
    """A chunked body with no Content-Length that never ends."""
    response = web.StreamResponse(headers={"Content-Type": "application/xml"})
    await response.prepare(request)
    await response.write(b'<VAST version="4.0">')
    chunk = b"<!--" + b"x" * 65_536 + b"-->"
    while True:
        await response.write(chunk)


async def test_an_endless_body_is_cut_at_the_cap_while_streaming(
    upstream: VastUpstream, server: VastServer, context: SessionContext
) -> None:
    started = time.perf_counter()
    result = await upstream.fetch(server.add(handler=stream_forever), context=context)
    assert (result.status, result.error_code) == ("error", 100)
    assert "cap" in result.errors[0].message
    assert time.perf_counter() - started < 2.0


async def test_a_gzip_bomb_stops_at_the_cap_without_inflating_it(
    transport: VastTransport, server: VastServer
) -> None:
    bomb = gzip.compress(b'<VAST version="4.0">' + b" " * (200 * MIB), compresslevel=9)
    assert len(bomb) < MIB  # it passes any check on the compressed size
    url = server.add(bomb, headers={"Content-Encoding": "gzip"})

    tracemalloc.start()
    try:
        with pytest.raises(ResponseTooLarge):
            await transport.get(url)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # One chunk of this bomb inflates to ~16 MiB; the cap (1 MiB) holds the body well below.
    assert peak < 6 * MIB


def endless(head: bytes, tail: bytes) -> Handler:
    """A gzip-encoded chunked response: `head`, then `tail` over and over, never ending."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Encoding": "gzip"})
        await response.prepare(request)
        await response.write(head)
        while True:
            await response.write(tail)

    return handler


async def test_bytes_after_the_gzip_stream_end_the_read(
    upstream: VastUpstream, server: VastServer, context: SessionContext
) -> None:
    # zlib keeps what follows the stream aside, unread and uncounted: a valid document and
    # then endless bytes would otherwise be read until the deadline.
    url = server.add(handler=endless(gzip.compress(vast(inline()).encode()), b"x" * 65_536))
    started = time.perf_counter()
    result = await upstream.fetch(url, context=context)
    assert (result.status, result.error_code) == ("error", 100)
    assert "after the end of the compressed body" in result.errors[0].message
    assert time.perf_counter() - started < 2.0


async def test_compressed_bytes_count_against_the_cap_even_when_they_inflate_to_nothing(
    upstream: VastUpstream, server: VastServer, context: SessionContext
) -> None:
    deflater = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)  # gzip
    head = deflater.compress(b'<VAST version="4.0">') + deflater.flush(zlib.Z_SYNC_FLUSH)
    empty_block = b"\x00\x00\x00\xff\xff"  # a stored deflate block of no bytes
    url = server.add(handler=endless(head, empty_block * 10_000))
    started = time.perf_counter()
    result = await upstream.fetch(url, context=context)
    assert (result.status, result.error_code) == ("error", 100)
    assert "compressed body exceeds" in result.errors[0].message
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_documents_are_decoded(
    transport: VastTransport, server: VastServer, encoding: str
) -> None:
    document = vast(inline()).encode()
    body = gzip.compress(document) if encoding == "gzip" else zlib.compress(document)
    fetched = await transport.get(server.add(body, headers={"Content-Encoding": encoding}))
    assert fetched.body == document


@pytest.mark.parametrize(
    ("body", "encoding", "message"),
    [
        (b"whatever", "br", "unsupported Content-Encoding"),
        (b"not gzip at all", "gzip", "corrupt"),
        (gzip.compress(bytes(range(256)) * 64)[:200], "gzip", "truncated"),
        (gzip.compress(b"<VAST/>") + b"<VAST/>", "gzip", "after the end"),
    ],
    ids=["brotli", "corrupt-gzip", "truncated-gzip", "gzip-then-more"],
)
async def test_undecodable_bodies_are_100(
    transport: VastTransport, server: VastServer, body: bytes, encoding: str, message: str
) -> None:
    with pytest.raises(DocumentError, match=message):
        await transport.get(server.add(body, headers={"Content-Encoding": encoding}))


async def test_redirects_are_followed_up_to_the_cap(server: VastServer) -> None:
    target = server.add(vast(inline()))
    hops = [target]
    for _ in range(3):
        hops.append(server.add(b"", status=307, headers={"Location": hops[-1]}))
    async with VastTransport(max_redirects=3) as transport:
        fetched = await transport.get(hops[-1])
        assert (fetched.status, fetched.url) == (200, target)
    async with VastTransport(max_redirects=2) as transport:
        with pytest.raises(TooManyRedirects):
            await transport.get(hops[-1])


async def test_a_redirect_loop_ends_at_the_cap(
    upstream: VastUpstream, server: VastServer, context: SessionContext
) -> None:
    first = server.add(b"")
    second = server.add(b"", status=302, headers={"Location": first})
    server.set(first, b"", status=301, headers={"Location": second})

    result = await upstream.fetch(first, context=context)

    assert (result.status, result.error_code) == ("error", 301)
    assert "redirects" in result.errors[0].message
    assert len(server.seen(first)) + len(server.seen(second)) == 6  # max_redirects + 1


@pytest.mark.parametrize(
    "uri",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/vast.xml",
        "javascript:alert(1)",
        "data:text/xml,<VAST/>",
        "gopher://127.0.0.1:6379/_INFO",
    ],
)
async def test_only_http_and_https_are_fetched(
    upstream: VastUpstream, server: VastServer, context: SessionContext, uri: str
) -> None:
    result = await upstream.fetch(server.add(vast(wrapper(uri))), context=context)
    assert (result.status, result.error_code) == ("error", 301)
    assert "http(s)" in result.errors[0].message
    assert result.chain[1].status == 0


async def test_a_redirect_to_another_scheme_is_refused(
    transport: VastTransport, server: VastServer
) -> None:
    with pytest.raises(InvalidUrl):
        await transport.get(server.add(b"", status=302, headers={"Location": "file:///etc/hosts"}))


def loopback_two(url: str) -> str:
    return url.replace("127.0.0.1", "127.0.0.2")


async def test_a_redirect_to_loopback_is_blocked_by_the_ssrf_guard(server: VastServer) -> None:
    private = server.add(vast(inline()))
    redirect = server.add(b"", status=302, headers={"Location": loopback_two(private)})

    # The guard admits the test server's own address and nothing else on loopback.
    async with VastTransport(
        block_private_addresses=True, allowed_networks=["127.0.0.1/32"]
    ) as guarded:
        with pytest.raises(BlockedAddress) as raised:
            await guarded.get(redirect)
    assert raised.value.code == 301
    assert server.seen(private) == []

    async with VastTransport() as unguarded:  # the same redirect, guard off
        assert (await unguarded.get(redirect)).status == 200
    assert len(server.seen(private)) == 1


@pytest.mark.parametrize(
    ("host", "error"),
    [
        ("localhost", BlockedAddress),  # a name: refused after DNS, in aiohttp's resolver
        ("127.0.0.2", BlockedAddress),
        ("[::1]", BlockedAddress),
        ("[::ffff:127.0.0.1]", BlockedAddress),
        ("2130706433", BlockedAddress),  # 127.0.0.1 as one number: the OS would take it
        ("127.1", BlockedAddress),
        ("0177.0.0.1", InvalidUrl),  # httpx refuses an octal quad before the guard sees it
    ],
)
async def test_the_ssrf_guard_refuses_non_global_hosts(
    server: VastServer, host: str, error: type[Exception]
) -> None:
    url = server.add(vast(inline()))
    port = url.split(":")[2].split("/")[0]
    async with VastTransport(block_private_addresses=True) as guarded:
        with pytest.raises(error):
            await guarded.get(url.replace(f"127.0.0.1:{port}", f"{host}:{port}"))
    assert server.seen(url) == []


async def test_the_ssrf_guard_covers_the_httpx_client(server: VastServer) -> None:
    # An IP literal skips aiohttp's resolver, where names are checked: the client checks it.
    url = server.add(vast(inline()))
    elsewhere = loopback_two(url)
    async with VastTransport(
        block_private_addresses=True, allowed_networks=["127.0.0.1/32"]
    ) as guarded:
        assert (await guarded.client.get(url)).status_code == 200
        with pytest.raises(httpx.ConnectError, match="not a global address"):
            await guarded.client.get(elsewhere)
    assert len(server.seen(url)) == 1
    async with VastTransport() as unguarded:  # the same URL answers with the guard off
        assert (await unguarded.client.get(elsewhere)).status_code == 200


async def test_the_ssrf_guard_covers_wrapped_tags(
    server: VastServer, context: SessionContext
) -> None:
    private = server.add(vast(inline()))
    root = server.add(vast(wrapper(loopback_two(private))))
    transport = VastTransport(block_private_addresses=True, allowed_networks=["127.0.0.1/32"])
    async with transport, VastUpstream(transport=transport, fire_error_pixels=False) as upstream:
        result = await upstream.fetch(root, context=context)
    assert (result.status, result.error_code) == ("error", 301)
    assert [hop.status for hop in result.chain] == [200, 0]
    assert server.seen(private) == []


def cut_at(elapsed: float, deadline: float, slack: float = 1.0) -> bool:
    """Ended at the deadline, not when the slow upstream would have: the slack is generous,
    since a busy machine may answer late; the real figures are `bench.vast_resolver`'s."""
    return deadline <= elapsed < deadline + slack


async def test_a_slow_upstream_is_cut_at_the_chain_deadline(
    server: VastServer, context: SessionContext
) -> None:
    slow = server.add(vast(inline()), delay=5)
    async with VastUpstream(timeout=0.5, hop_timeout=3, fire_error_pixels=False) as upstream:
        started = time.perf_counter()
        result = await upstream.fetch(slow, context=context)
        elapsed = time.perf_counter() - started
    assert (result.status, result.error_code) == ("error", 301)
    assert cut_at(elapsed, 0.5), elapsed
    assert result.chain[0].status == 0


async def test_a_slow_hop_is_cut_at_the_hop_timeout(
    server: VastServer, context: SessionContext
) -> None:
    slow = server.add(vast(inline()), delay=5)
    async with VastUpstream(timeout=3, hop_timeout=0.4, fire_error_pixels=False) as upstream:
        started = time.perf_counter()
        result = await upstream.fetch(server.add(vast(wrapper(slow))), context=context)
        elapsed = time.perf_counter() - started
    assert result.error_code == 301
    assert cut_at(elapsed, 0.4), elapsed


async def test_the_deadline_holds_over_a_chain_of_slowish_hops_with_retries(
    server: VastServer, context: SessionContext
) -> None:
    from streams.vast import RetryPolicy

    url = server.add(vast(inline()), delay=0.25)
    for _ in range(3):
        url = server.add(vast(wrapper(url)), delay=0.25)
    async with VastUpstream(
        timeout=0.6, retry=RetryPolicy(max_retries=5, backoff=0.01), fire_error_pixels=False
    ) as upstream:
        started = time.perf_counter()
        result = await upstream.fetch(url, context=context)
        elapsed = time.perf_counter() - started
    assert result.error_code == 301
    assert cut_at(elapsed, 0.6, slack=0.35), elapsed  # all four hops would take 1 s
    assert len(result.chain) == 3  # two hops done, the third cut by the deadline
