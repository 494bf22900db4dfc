"""Wrapper chains end to end over HTTP: depth, cycles, relative URIs, the Wrapper attributes,
pods, macros, cookies, the recorded chain and the error pixels actually fired."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from urllib.parse import parse_qs

import pytest

from models.context import SessionContext
from streams.vast import VastTransport, VastUpstream
from streams.vast.pixels import ErrorPixels
from tests.upstream import Reply, VastServer, inline, vast, wrapper


@pytest.fixture
async def upstream() -> AsyncIterator[VastUpstream]:
    async with VastUpstream() as upstream:
        yield upstream


def pixel(server: VastServer, delay: float = 0.0) -> str:
    """A route recording error pixels; its URL asks for the code and a cachebuster."""
    return server.add(b"", name="pixel", delay=delay) + "?code=[ERRORCODE]&cb=[CACHEBUSTING]"


def chain_of(server: VastServer, wrappers: int, *, error_pixel: str | None = None) -> str:
    """The URL of `wrappers` Wrappers in a row, ending at an InLine."""
    url = server.add(vast(inline(ad_id="end")))
    for n in range(wrappers):
        url = server.add(vast(wrapper(url, ad_id=f"w{n}", error=error_pixel)))
    return url


async def test_five_wrappers_resolve(
    upstream: VastUpstream, server: VastServer, context: SessionContext
) -> None:
    result = await upstream.fetch(chain_of(server, 5), context=context)
    assert result.status == "inline"
    assert result.ads[0].wrappers == 5
    assert len(result.chain) == 6


async def test_a_sixth_wrapper_is_302_reported_to_every_wrapper(
    upstream: VastUpstream, server: VastServer, context: SessionContext
) -> None:
    error_pixel = pixel(server)
    result = await upstream.fetch(chain_of(server, 6, error_pixel=error_pixel), context=context)

    assert (result.status, result.error_code) == ("error", 302)
    assert len(result.chain) == 6  # the InLine behind the sixth Wrapper is never fetched
    assert upstream.error_pixels is not None
    await upstream.error_pixels.drain()
    fired = [parse_qs(seen.query) for seen in server.seen(error_pixel)]
    assert [(q["code"], q["cb"]) for q in fired] == [(["302"], [context.cachebusting])] * 6


async def test_the_depth_limit_is_configurable(server: VastServer, context: SessionContext) -> None:
    async with VastUpstream(max_depth=2) as upstream:
        assert (await upstream.fetch(chain_of(server, 2), context=context)).status == "inline"
        assert (await upstream.fetch(chain_of(server, 3), context=context)).error_code == 302


async def test_a_wrapper_loop_is_302_and_stops(
    upstream: VastUpstream, server: VastServer, context: SessionContext
) -> None:
    first = server.add(b"")
    second = server.add(vast(wrapper(first)))
    server.set(first, vast(wrapper(second)))

    result = await upstream.fetch(first, context=context)

    assert (result.status, result.error_code) == ("error", 302)
    assert "already in this chain" in result.errors[0].message
    assert [hop.url for hop in result.chain] == [first, second]


async def test_pod_siblings_may_share_a_url(
    upstream: VastUpstream, server: VastServer, context: SessionContext
) -> None:
    shared = server.add(vast(inline(ad_id="shared")))
    root = server.add(
        vast(wrapper(shared, ad_id="a", sequence=1), wrapper(shared, ad_id="b", sequence=2))
    )

    result = await upstream.fetch(root, context=context)

    assert [(ad.id, ad.sequence) for ad in result.ads] == [("shared", 1), ("shared", 2)]
    assert len(server.seen(shared)) == 2


@pytest.mark.parametrize(
    ("uri", "target"),
    [
        ("next.xml", "/dir/sub/next.xml"),
        ("../up.xml", "/dir/up.xml"),
        ("/top.xml", "/top.xml"),
        ("?page=2", "/dir/sub/root.xml"),
    ],
)
async def test_relative_vast_ad_tag_uris(
    upstream: VastUpstream, server: VastServer, context: SessionContext, uri: str, target: str
) -> None:
    prefix = server.fresh_path()
    if target != "/dir/sub/root.xml":
        server.add(vast(inline(ad_id="relative")), path=prefix + target)
    root_doc = vast(wrapper(uri.replace("/top", f"{prefix}/top")))
    root_url = server.add(
        [Reply(root_doc.encode()), Reply(vast(inline(ad_id="relative")).encode())],
        path=f"{prefix}/dir/sub/root.xml",
    )

    result = await upstream.fetch(root_url, context=context)

    assert [ad.id for ad in result.ads] == ["relative"]
    assert result.chain[1].url.startswith(server.url(prefix + target))


async def test_a_scheme_relative_uri(
    upstream: VastUpstream, server: VastServer, context: SessionContext
) -> None:
    target = server.add(vast(inline(ad_id="far")))
    root = server.add(vast(wrapper(target.removeprefix("http:"))))
    result = await upstream.fetch(root, context=context)
    assert [ad.id for ad in result.ads] == ["far"]


async def test_follow_additional_wrappers_false(
    upstream: VastUpstream, server: VastServer, context: SessionContext
) -> None:
    further = server.add(vast(inline(ad_id="too-far")))
    mixed = server.add(vast(wrapper(further, ad_id="w"), inline(ad_id="here")))
    only_wrappers = server.add(vast(wrapper(further)))
    no_more = 'followAdditionalWrappers="false"'

    result = await upstream.fetch(
        server.add(vast(wrapper(mixed, attributes=no_more))), context=context
    )
    assert [ad.id for ad in result.ads] == ["here"]

    result = await upstream.fetch(
        server.add(vast(wrapper(only_wrappers, attributes=no_more))), context=context
    )
    assert (result.status, result.error_code) == ("error", 300)
    assert server.seen(further) == []


async def test_allow_multiple_ads(
    upstream: VastUpstream, server: VastServer, context: SessionContext
) -> None:
    pod_and_buffet = server.add(
        vast(
            inline(ad_id="p2", sequence=2),
            inline(ad_id="p1", sequence=1),
            inline(ad_id="alone"),
        )
    )

    many = await upstream.fetch(
        server.add(vast(wrapper(pod_and_buffet, attributes='allowMultipleAds="true"'))),
        context=context,
    )
    one = await upstream.fetch(server.add(vast(wrapper(pod_and_buffet))), context=context)

    assert [ad.id for ad in many.ads] == ["p1", "p2"]
    assert [ad.id for ad in one.ads] == ["alone"]


async def test_the_caller_may_refuse_pods(server: VastServer, context: SessionContext) -> None:
    pod = server.add(vast(inline(ad_id="p1", sequence=1), inline(ad_id="p2", sequence=2)))
    async with VastUpstream(allow_multiple_ads=False) as upstream:
        result = await upstream.fetch(pod, context=context)
    assert (result.status, result.error_code) == ("error", 300)


@pytest.mark.parametrize(("fallback", "expected"), [("true", ["b", "p2"]), ("false", ["p2"])])
async def test_fallback_on_no_ad(
    upstream: VastUpstream,
    server: VastServer,
    context: SessionContext,
    fallback: str,
    expected: list[str],
) -> None:
    empty = server.add(vast())
    root = server.add(
        vast(
            wrapper(empty, ad_id="p1", sequence=1, attributes=f'fallbackOnNoAd="{fallback}"'),
            inline(ad_id="p2", sequence=2),
            inline(ad_id="b"),
        )
    )

    result = await upstream.fetch(root, context=context)

    assert [ad.id for ad in result.ads] == expected
    assert [report.code for report in result.errors] == [303]


async def test_a_pod_comes_back_in_sequence_order_whatever_answers_first(
    upstream: VastUpstream, server: VastServer, context: SessionContext
) -> None:
    slow = server.add(vast(inline(ad_id="first")), delay=0.2)
    fast = server.add(vast(inline(ad_id="second")))
    root = server.add(
        vast(
            wrapper(fast, ad_id="w2", sequence=2),
            wrapper(slow, ad_id="w1", sequence=1),
            inline(ad_id="third", sequence=3),
        )
    )

    result = await upstream.fetch(root, context=context)

    assert [(ad.id, ad.sequence) for ad in result.ads] == [
        ("first", 1),
        ("second", 2),
        ("third", 3),
    ]
    assert [hop.url for hop in result.chain][-1] == slow  # hops are listed as they complete


async def test_macros_in_tags_wrappers_and_tracking(
    server: VastServer, context: SessionContext
) -> None:
    inline_url = server.add(
        vast(inline(impression="http://pixels.invalid/i?cb=[CACHEBUSTING]&d=[DOMAIN]"))
    )
    wrapped = server.add(vast(wrapper(inline_url + "?cb=[CACHEBUSTING]&c=[CORRELATOR]")))
    tag = wrapped + "?ts=[TIMESTAMP]&cb=%%CACHEBUSTING%%&keep=[NOT_A_MACRO]"

    async with VastUpstream(unix_timestamp=True) as upstream:
        result = await upstream.fetch(
            tag, context=context, params={"placement_id": "a b/c", "domain": "example.org"}
        )

    (root_request,) = server.seen(wrapped)
    assert parse_qs(root_request.query) == {
        "ts": [str(context.timestamp)],
        "cb": [context.cachebusting],
        "keep": ["[NOT_A_MACRO]"],
        "placement_id": ["a b/c"],
        "domain": ["example.org"],
    }
    (wrapped_request,) = server.seen(inline_url)
    assert parse_qs(wrapped_request.query) == {
        "cb": [context.cachebusting],
        "c": [context.correlator],
    }
    # Handed on: the macros stay for whoever fires the pixel.
    assert result.ads[0].impressions[-1] == "http://pixels.invalid/i?cb=[CACHEBUSTING]&d=[DOMAIN]"
    assert "i?cb=[CACHEBUSTING]&amp;d=[DOMAIN]" in result.ads[0].vast


async def test_params_for_the_upstreams_own_url(
    server: VastServer, context: SessionContext
) -> None:
    url = server.add(vast(inline()))
    async with VastUpstream(url + "?v=1") as upstream:
        result = await upstream.fetch({"placement_id": "x"}, context=context)
        with pytest.raises(TypeError):
            await VastUpstream().fetch(context=context)
    assert result.status == "inline"
    assert parse_qs(server.seen(url)[0].query) == {"v": ["1"], "placement_id": ["x"]}


async def test_request_params_never_override_the_campaigns_query(
    server: VastServer, context: SessionContext
) -> None:
    # An upstream given a key twice picks one by its own rule (PHP the last, Java the first):
    # a request param whose key is already in the tag's query, in any spelling, is left out.
    url = server.add(vast(inline()))
    campaign = VastUpstream(url + "?account=A&Site=one&my+key=1&acc%5Fid=7")
    params = {
        "account": "EVIL",
        "site": "EVIL",
        "my key": "EVIL",
        "acc_id": "EVIL",
        "Zone": "z",
        "zone": "EVIL",
        "placement_id": "p",
    }
    async with campaign:
        result = await campaign.fetch(params=params, context=context)
    assert result.status == "inline"
    assert parse_qs(server.seen(url)[0].query) == {
        "account": ["A"],
        "Site": ["one"],
        "my key": ["1"],
        "acc_id": ["7"],
        "Zone": ["z"],
        "placement_id": ["p"],
    }


async def test_cookies_come_from_each_requests_context_only(
    upstream: VastUpstream, server: VastServer
) -> None:
    inline_url = server.add(vast(inline()), headers={"Set-Cookie": "tracker=leak; Path=/"})
    root = server.add(vast(wrapper(inline_url)), headers={"Set-Cookie": "root=leak; Path=/"})
    alice = SessionContext.create({"user_id": "alice", "bad;name": "x", "ok": "a\r\nb"})
    bob = SessionContext.create({"user_id": "bob"})
    nobody = SessionContext.create()

    for context in (alice, bob, nobody):
        assert (await upstream.fetch(root, context=context)).status == "inline"

    cookies = [seen.headers.get("Cookie") for seen in server.seen(root)]
    assert cookies == ["user_id=alice", "user_id=bob", None]
    assert [seen.headers.get("Cookie") for seen in server.seen(inline_url)] == cookies


async def test_cookies_do_not_follow_a_redirect_to_another_origin(
    upstream: VastUpstream, server: VastServer, context: SessionContext
) -> None:
    other_origin = server.add(vast(inline())).replace("127.0.0.1", "127.0.0.2")
    same_origin = server.add(b"", status=302, headers={"Location": other_origin})
    root = server.add(b"", status=302, headers={"Location": same_origin})

    result = await upstream.fetch(root, context=context)

    assert result.status == "inline"
    assert [hop.url for hop in result.chain] == [root]  # redirects are inside one hop
    assert server.seen(same_origin)[0].headers.get("Cookie") == "user_id=u-1"
    assert server.seen(other_origin)[0].headers.get("Cookie") is None


async def test_the_chain_records_each_hop(
    upstream: VastUpstream, server: VastServer, context: SessionContext
) -> None:
    end = server.add(vast(inline()), delay=0.05)
    root = server.add(vast(wrapper(end)))

    result = await upstream.fetch(root, context=context)

    assert [(hop.url, hop.status, hop.attempts, hop.cached) for hop in result.chain] == [
        (root, 200, 1, False),
        (end, 200, 1, False),
    ]
    assert result.chain[1].ms >= 50
    assert result.chain[0].ms < result.chain[1].ms


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (Reply(b"", status=204), 303),
        (Reply(b"  \n"), 303),
        (Reply(vast().encode(), status=404), 301),
        (Reply(vast().encode(), status=500), 301),
        (Reply(b"", status=302), 301),  # a redirect without Location
    ],
)
async def test_empty_and_failed_responses(
    upstream: VastUpstream, server: VastServer, context: SessionContext, reply: Reply, code: int
) -> None:
    url = server.add([reply])
    result = await upstream.fetch(url, context=context)
    assert result.error_code == code
    assert result.status == ("no_ad" if code == 303 else "error")
    assert result.chain[0].status == reply.status


async def test_error_pixels_never_delay_the_result(
    upstream: VastUpstream, server: VastServer, context: SessionContext
) -> None:
    slow_pixel = pixel(server, delay=3)
    root = server.add(vast(wrapper(server.add(b"", status=404), error=slow_pixel)))

    started = time.perf_counter()
    result = await upstream.fetch(root, context=context)
    elapsed = time.perf_counter() - started

    assert result.error_code == 301
    fired = slow_pixel.replace("[ERRORCODE]", "301").replace("[CACHEBUSTING]", context.cachebusting)
    assert result.errors[0].urls == (fired,)
    assert elapsed < 1.5  # the pixel answers after 3 s: firing it is not waited for
    assert upstream.error_pixels is not None
    assert upstream.error_pixels.pending == 1
    await upstream.error_pixels.drain()
    assert [parse_qs(seen.query)["code"] for seen in server.seen(slow_pixel)] == [["301"]]


async def test_error_pixels_are_bounded(server: VastServer) -> None:
    slow = server.add(b"", name="pixel", delay=0.2)
    async with VastTransport() as transport:
        pixels = ErrorPixels(transport, max_concurrency=2, max_pending=5)
        pixels.fire([slow] * 7)
        assert (pixels.pending, pixels.dropped) == (5, 2)
        await pixels.drain()
    assert len(server.seen(slow)) == 5
    assert server.route(slow).max_in_flight == 2


async def test_closing_cancels_pixels_that_outlive_the_grace(server: VastServer) -> None:
    stuck = server.add(b"", name="pixel", delay=30)
    async with VastTransport() as transport:
        pixels = ErrorPixels(transport)
        pixels.fire([stuck, stuck])
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        await pixels.aclose(grace=0.1)
        assert time.perf_counter() - started < 1.0
        assert pixels.pending == 0
