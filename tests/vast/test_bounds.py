"""What one request may cost the resolver, whatever its upstreams answer: ads per document,
upstream fetches, memory per pod, CPU past the deadline, what one ad may hold."""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import pytest

from models.context import SessionContext
from streams.vast import (
    DeadlinePassed,
    RetryPolicy,
    TooManyAds,
    VastUpstream,
    parse_vast,
)
from streams.vast.deadline import Deadline
from tests.upstream import VastServer, fallbacks, inline, merge_bomb, pod_with_macros, vast, wrapper

KIB = 1024


def upstream(**limits: Any) -> VastUpstream:
    return VastUpstream(fire_error_pixels=False, **limits)


async def test_a_document_may_hold_fifty_ads_and_no_more(
    server: VastServer, context: SessionContext
) -> None:
    fifty = server.add(vast(*(inline(ad_id=f"a{n}", sequence=n + 1) for n in range(50))))
    fifty_one = server.add(vast(*(inline(ad_id=f"a{n}", sequence=n + 1) for n in range(51))))
    async with upstream() as resolver:
        pod = await resolver.fetch(fifty, context=context)
        refused = await resolver.fetch(fifty_one, context=context)
    assert (pod.status, len(pod.ads)) == ("inline", 50)
    assert (refused.status, refused.error_code) == ("error", 101)
    assert "more than 50 ads" in refused.errors[0].message


def test_the_ads_cap_is_a_schema_error_and_configurable() -> None:
    document = vast(*(inline(ad_id=f"a{n}") for n in range(4))).encode()
    with pytest.raises(TooManyAds) as raised:
        parse_vast(document, max_ads=3)
    assert raised.value.code == 101
    assert len(parse_vast(document, max_ads=4).ads) == 4


async def test_a_storm_of_5000_fallback_wrappers_costs_ten_gets(
    server: VastServer, context: SessionContext
) -> None:
    empty = server.add(vast(), name="empty.xml")
    storm = server.add(fallbacks(empty, 5000), name="storm.xml")
    # The ads cap would refuse this document at once: lift it to meet the fetch cap.
    async with upstream(max_ads=10_000) as resolver:
        started = time.perf_counter()
        result = await resolver.fetch(storm, context=context)
        elapsed = time.perf_counter() - started
    gets = len(server.seen(storm)) + len(server.seen(empty))
    assert gets == 10
    assert len(result.chain) == 10
    # The first failure is the outcome; the cap is among the failures reported.
    assert (result.status, result.error_code) == ("no_ad", 303)
    assert result.errors[-1].code == 302
    assert len(result.errors) == 10
    assert elapsed < 5, elapsed


async def test_the_same_storm_under_the_default_ads_cap_costs_one_get(
    server: VastServer, context: SessionContext
) -> None:
    empty = server.add(vast(), name="empty.xml")
    storm = server.add(fallbacks(empty, 5000), name="storm.xml")
    async with upstream() as resolver:
        result = await resolver.fetch(storm, context=context)
    assert result.error_code == 101
    assert (len(server.seen(storm)), len(server.seen(empty))) == (1, 0)


async def test_a_pod_of_wrappers_shares_the_fetch_cap_and_keeps_what_resolved(
    server: VastServer, context: SessionContext
) -> None:
    ad = server.add(vast(inline()), name="ad.xml")
    pod = server.add(vast(*(wrapper(ad, ad_id=f"w{n}", sequence=n + 1) for n in range(40))))
    async with upstream(max_fetches=6) as resolver:
        result = await resolver.fetch(pod, context=context)
    assert len(server.seen(pod)) + len(server.seen(ad)) == 6
    # The five Wrappers fetched before the cap resolved; the pod keeps them, in order.
    assert result.status == "inline"
    assert [a.sequence for a in result.ads] == [1, 2, 3, 4, 5]
    assert {report.code for report in result.errors} == {302}


async def test_retries_count_against_the_fetch_cap(
    server: VastServer, context: SessionContext
) -> None:
    broken = server.add("down", status=503)
    async with upstream(max_fetches=3) as resolver:
        result = await resolver.fetch(
            broken, context=context, retry=RetryPolicy(max_retries=10, backoff=0.001)
        )
    assert len(server.seen(broken)) == 3
    assert result.error_code == 302


async def test_a_pods_memory_does_not_grow_with_its_ads_times_its_document(
    server: VastServer, context: SessionContext
) -> None:
    document = pod_with_macros(300, 400 * KIB)
    url = server.add(document)
    async with upstream(max_ads=300) as resolver:
        await resolver.fetch(url, context=context)  # warm: connections, caches
        tracemalloc.start()
        try:
            result = await resolver.fetch(url, context=context)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert len(result.ads) == 300
    # One unwrapped document for all 300 ads: they share it.
    assert len({id(ad.vast) for ad in result.ads}) == 1
    # The body, its tree, one unwrapped copy and the ads, with room to spare: not 300
    # documents (~130 MB).
    assert peak < 20 * len(document), peak


def test_the_deadline_stops_parsing() -> None:
    document = vast(*(inline(ad_id=f"a{n}") for n in range(3))).encode()
    with pytest.raises(DeadlinePassed) as raised:
        parse_vast(document, deadline=Deadline(time.monotonic()))
    assert raised.value.code == 301


async def test_the_chain_deadline_bounds_merging(
    server: VastServer, context: SessionContext
) -> None:
    url = merge_bomb(server, wrappers=5, tracking=5000, creatives=2000)
    # The ad budget would stop this too: lift it to meet the deadline.
    async with upstream(timeout=0.5, max_ad_chars=10**12) as resolver:
        started = time.perf_counter()
        result = await resolver.fetch(url, context=context)
        elapsed = time.perf_counter() - started
    assert (result.status, result.error_code) == ("error", 301)
    assert "while merging" in result.errors[0].message
    assert elapsed < 2.5, elapsed  # merging it all takes several times longer


async def test_an_ad_holds_at_most_its_budget(server: VastServer, context: SessionContext) -> None:
    url = merge_bomb(server, wrappers=5, tracking=5000, creatives=2000)
    async with upstream(timeout=30) as resolver:
        started = time.perf_counter()
        result = await resolver.fetch(url, context=context)
        elapsed = time.perf_counter() - started
    assert (result.status, result.error_code) == ("error", 100)
    assert "too large" in result.errors[0].message
    assert elapsed < 2.5, elapsed
