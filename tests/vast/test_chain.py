"""`streams.vast.chain`, pure: which ads a response yields, and how Wrappers merge in."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from models.ad import Creative, Tracking, ViewableImpression
from streams.vast import NoAdError, ResponseTooLarge, WrapperError, parse_vast
from streams.vast.chain import Rules, may_fall_back, plan, resolve_ad
from streams.vast.document import Ad, Wrapper
from tests.upstream import inline, vast, wrapper

MANY = Rules(allow_multiple_ads=True)
ONE = Rules(allow_multiple_ads=False)


def ids(ads: Iterable[Ad]) -> list[str | None]:
    return [ad.id for ad in ads]


def test_a_pod_is_resolved_in_sequence_order_with_the_buffet_as_fallbacks() -> None:
    doc = parse_vast(
        vast(
            inline(ad_id="s2", sequence=2),
            inline(ad_id="b1"),
            inline(ad_id="s1", sequence=1),
            inline(ad_id="b2"),
        ).encode()
    )
    targets, fallbacks = plan(doc, MANY)
    assert ids(targets) == ["s1", "s2"]
    assert ids(fallbacks) == ["b1", "b2"]


def test_one_ad_allowed_means_the_first_stand_alone_ad() -> None:
    doc = parse_vast(
        vast(inline(ad_id="s1", sequence=1), inline(ad_id="b1"), inline(ad_id="b2")).encode()
    )
    targets, fallbacks = plan(doc, ONE)
    assert ids(targets) == ["b1"]
    assert ids(fallbacks) == ["b2"]


def test_without_a_pod_many_allowed_still_takes_one_stand_alone_ad() -> None:
    doc = parse_vast(vast(inline(ad_id="b1"), inline(ad_id="b2")).encode())
    targets, fallbacks = plan(doc, MANY)
    assert (ids(targets), ids(fallbacks)) == (["b1"], ["b2"])


def test_a_lone_sequenced_ad_counts_as_one_ad() -> None:
    doc = parse_vast(vast(inline(ad_id="s1", sequence=1)).encode())
    assert ids(plan(doc, ONE).targets) == ["s1"]


def test_a_pod_where_one_ad_is_allowed_is_300() -> None:
    doc = parse_vast(vast(inline(ad_id="s1", sequence=1), inline(ad_id="s2", sequence=2)).encode())
    with pytest.raises(WrapperError) as raised:
        plan(doc, ONE)
    assert raised.value.code == 300


def test_follow_additional_wrappers_false_ignores_wrappers() -> None:
    rules = Rules(allow_multiple_ads=False, follow_additional_wrappers=False)
    doc = parse_vast(vast(wrapper("x", ad_id="w"), inline(ad_id="i")).encode())
    assert ids(plan(doc, rules).targets) == ["i"]
    only_wrappers = parse_vast(vast(wrapper("x")).encode())
    with pytest.raises(WrapperError):
        plan(only_wrappers, rules)


def test_an_empty_response_is_303() -> None:
    with pytest.raises(NoAdError) as raised:
        plan(parse_vast(vast().encode()), MANY)
    assert raised.value.code == 303


def test_rules_come_from_the_wrapper() -> None:
    rules = Rules.of(Wrapper("x", follow_additional_wrappers=False, allow_multiple_ads=True))
    assert rules == Rules(allow_multiple_ads=True, follow_additional_wrappers=False)


@pytest.mark.parametrize(
    ("ad", "expected"),
    [
        (Ad(), True),
        (Ad(wrapper=Wrapper("x")), True),
        (Ad(wrapper=Wrapper("x", fallback_on_no_ad=True)), True),
        (Ad(wrapper=Wrapper("x", fallback_on_no_ad=False)), False),
    ],
)
def test_fallback_on_no_ad(ad: Ad, expected: bool) -> None:
    assert may_fall_back(ad) is expected


def test_merge_order_keeps_macros_for_whoever_fires() -> None:
    outer = Ad(
        impressions=("http://o/imp?cb=[CACHEBUSTING]",),
        errors=("http://o/err?e=[ERRORCODE]",),
        creatives=(
            Creative(
                kind="linear",
                tracking=(Tracking("start", "http://o/start"),),
                click_tracking=("http://o/click",),
                click_through="http://o/through",
            ),
            Creative(
                kind="companion",
                tracking=(Tracking("creativeView", "http://o/view"),),
                click_tracking=("http://o/companion-click",),
            ),
        ),
        wrapper=Wrapper("http://inner"),
    )
    inner = Ad(
        impressions=("http://i/imp",),
        creatives=(Creative(kind="linear", tracking=(Tracking("start", "http://i/start"),)),),
        viewable_impression=ViewableImpression(viewable=("http://i/viewable",)),
        wrapper=Wrapper("http://inline"),
    )
    ad = Ad(
        id="a",
        impressions=("http://a/imp",),
        errors=("http://a/err",),
        creatives=(
            Creative(
                kind="linear",
                tracking=(Tracking("start", "http://a/start?t=[TIMESTAMP]&p=[ADPLAYHEAD]"),),
                click_tracking=("http://a/click",),
            ),
            Creative(kind="nonlinear"),
            Creative(kind="companion", click_tracking=("http://a/companion-click",)),
        ),
        viewable_impression=ViewableImpression(not_viewable=("http://a/not-viewable",)),
    )

    resolved = resolve_ad(ad, [outer, inner])

    assert resolved.impressions == (
        "http://o/imp?cb=[CACHEBUSTING]",
        "http://i/imp",
        "http://a/imp",
    )
    assert resolved.errors == ("http://o/err?e=[ERRORCODE]", "http://a/err")
    wrapper_companion, linear, nonlinear, companion = resolved.creatives
    assert [t.url for t in linear.tracking] == [
        "http://a/start?t=[TIMESTAMP]&p=[ADPLAYHEAD]",
        "http://i/start",
        "http://o/start",
    ]
    assert linear.click_tracking == ("http://a/click", "http://o/click")
    assert linear.click_through == "http://o/through"
    assert nonlinear.tracking == ()
    # The Wrapper's companion is served as a companion, and its click trackers go to the
    # InLine's companions too (vast-client-js's rule).
    assert wrapper_companion.tracking == (Tracking("creativeView", "http://o/view"),)
    assert wrapper_companion.click_tracking == ("http://o/companion-click",)
    assert companion.click_tracking == ("http://a/companion-click", "http://o/companion-click")
    assert resolved.viewable_impression == ViewableImpression(
        viewable=("http://i/viewable",), not_viewable=("http://a/not-viewable",)
    )
    assert resolved.wrappers == 2


def test_an_ad_past_its_budget_is_refused() -> None:
    ad = parse_vast(vast(inline(impression="http://i/" + "x" * 100)).encode()).ads[0]
    assert resolve_ad(ad, [], max_chars=1000).impressions
    with pytest.raises(ResponseTooLarge):
        resolve_ad(ad, [], max_chars=100)
