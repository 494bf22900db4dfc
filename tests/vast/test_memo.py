"""Documents parsed and selections unwrapped once per worker: what a later request gets from
the memo is exactly what a fresh resolution builds, nothing of another request comes with it,
and the memo stays within its bounds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from models.context import SessionContext
from streams.vast import VastResult, VastUpstream
from streams.vast.lru import Lru
from streams.vast.memo import ResolverMemo
from tests.upstream import VastServer, inline, vast, wrapper

MAX_ENTRIES, MAX_BYTES, MAX_ENTRY_BYTES = 4, 100, 60

operations = st.lists(
    st.tuples(st.sampled_from(["get", "put"]), st.integers(0, 6), st.integers(0, 90)),
    max_size=60,
)


@given(operations)
def test_the_lru_keeps_the_most_recent_entries_within_its_bounds(
    ops: list[tuple[str, int, int]],
) -> None:
    lru: Lru[int, str] = Lru(
        max_entries=MAX_ENTRIES, max_bytes=MAX_BYTES, max_entry_bytes=MAX_ENTRY_BYTES
    )
    model: list[tuple[int, str, int]] = []  # least recently used first
    for step, (op, key, size) in enumerate(ops):
        held = next((entry for entry in model if entry[0] == key), None)
        if op == "get":
            assert lru.get(key) == (held[1] if held else None)
            if held:
                model.remove(held)
                model.append(held)
        else:
            value = f"{key}@{step}"
            lru.put(key, value, size)
            if size <= MAX_ENTRY_BYTES:
                if held:
                    model.remove(held)
                model.append((key, value, size))
                while sum(s for *_, s in model) > MAX_BYTES or len(model) > MAX_ENTRIES:
                    model.pop(0)
        assert len(lru) == len(model) <= MAX_ENTRIES
        assert lru.bytes == sum(s for *_, s in model) <= MAX_BYTES


async def resolve(
    upstream: VastUpstream, url: str, context: SessionContext, **params: str
) -> VastResult:
    result = await upstream.fetch(url, context=context, params=params)
    assert result.status == "inline", result.errors
    return result


async def fresh(
    url: str, context: SessionContext, *, allow_multiple_ads: bool = True
) -> VastResult:
    """`url` resolved by an upstream that has seen nothing before."""
    async with VastUpstream(
        fire_error_pixels=False, allow_multiple_ads=allow_multiple_ads
    ) as upstream:
        return await upstream.fetch(url, context=context)


def chain_of_two(server: VastServer) -> str:
    """A Wrapper (tag with a macro) above an InLine whose URLs hold macros for the player."""
    end = server.add(
        vast(
            inline(
                impression="http://p.invalid/i?cb=[CACHEBUSTING]&ts=[TIMESTAMP]",
                tracking=[("start", "http://p.invalid/s?pos=[ADPLAYHEAD]")],
            )
        )
    )
    return server.add(vast(wrapper(end + "?cb=[CACHEBUSTING]", tracking=[("start", end)])))


async def test_a_later_request_gets_what_a_fresh_resolution_builds(
    server: VastServer, context: SessionContext
) -> None:
    url = chain_of_two(server)
    other = SessionContext.create({"user_id": "u-2"}, timestamp=1_800_000_000_000)
    async with VastUpstream(fire_error_pixels=False) as upstream:
        first = await resolve(upstream, url, context, site="one")
        second = await resolve(upstream, url, other, site="two")
    assert second.ads is first.ads  # from the memo
    assert second.ads == (await fresh(url, other)).ads
    assert "cb=[CACHEBUSTING]" in second.ads[0].impressions[-1]  # a template, for the player
    # What belongs to the request is its own: its hops, asked with its own macros.
    assert [hop.url.split("?")[0] for hop in second.chain] == [
        hop.url.split("?")[0] for hop in first.chain
    ]
    assert "site=two" in second.chain[0].url and "site=one" in first.chain[0].url
    assert second.chain[1].url != first.chain[1].url  # a cachebuster of its own


async def test_pods_and_stand_alone_ads_of_the_same_documents_stay_apart(
    server: VastServer, context: SessionContext
) -> None:
    url = server.add(
        vast(
            inline(ad_id="pod-1", sequence=1),
            inline(ad_id="pod-2", sequence=2),
            inline(ad_id="alone"),
        )
    )
    memo = ResolverMemo()
    async with (
        VastUpstream(fire_error_pixels=False, memo=memo) as pods,
        VastUpstream(fire_error_pixels=False, memo=memo, allow_multiple_ads=False) as single,
    ):
        pod = await resolve(pods, url, context)
        alone = await resolve(single, url, context)
    assert [ad.id for ad in pod.ads] == ["pod-1", "pod-2"]
    assert [ad.id for ad in alone.ads] == ["alone"]
    assert pod.ads == (await fresh(url, context)).ads
    assert alone.ads == (await fresh(url, context, allow_multiple_ads=False)).ads
    assert len(memo.unwrapped) == 2


async def test_the_ad_size_bound_is_part_of_what_is_reused(
    server: VastServer, context: SessionContext
) -> None:
    url = chain_of_two(server)
    memo = ResolverMemo()
    async with (
        VastUpstream(fire_error_pixels=False, memo=memo) as roomy,
        VastUpstream(fire_error_pixels=False, memo=memo, max_ad_chars=500) as tight,
    ):
        await resolve(roomy, url, context)
        result = await tight.fetch(url, context=context)
    assert (result.status, result.error_code) == ("error", 100)


async def test_a_large_document_is_built_anew_not_kept(
    server: VastServer, context: SessionContext
) -> None:
    events = [("progress", f"http://p.invalid/{n}?{'x' * 1000}") for n in range(600)]
    url = server.add(vast(inline(tracking=events)))
    memo = ResolverMemo()
    async with VastUpstream(fire_error_pixels=False, memo=memo, max_ad_chars=2_000_000) as up:
        first = await resolve(up, url, context)
        second = await resolve(up, url, context)
    assert len(server.route(url).replies[0].body) > 600_000
    assert second.ads == first.ads and second.ads is not first.ads
    assert len(second.ads[0].vast) > 600_000
    assert (len(memo.parsed), memo.parsed.bytes, len(memo.unwrapped), memo.unwrapped.bytes) == (
        0,
        0,
        0,
        0,
    )


async def test_the_memo_holds_at_most_its_entries(
    server: VastServer, context: SessionContext
) -> None:
    memo = ResolverMemo(max_entries=2)
    async with VastUpstream(fire_error_pixels=False, memo=memo) as upstream:
        for n in range(5):
            url = server.add(vast(inline(ad_id=f"ad-{n}")))
            assert (await resolve(upstream, url, context)).ads[0].id == f"ad-{n}"
    assert (len(memo.parsed), len(memo.unwrapped)) == (2, 2)
