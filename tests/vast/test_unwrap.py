"""What a player is handed: one unwrapped document holding the whole chain and only the
served ads, URLs kept as templates for whoever fires them, only http(s) URLs.

Each of the first four tests is one way the resolver used to disagree with vast-client-js.
"""

from __future__ import annotations

from lxml import etree

from models.context import SessionContext
from streams.vast import VastResult, VastUpstream
from tests.upstream import VastServer, inline, vast

NS = "{http://www.iab.com/VAST}"


def wrapper_of(uri: str, body: str = "", attributes: str = "") -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<VAST version="4.2" xmlns="http://www.iab.com/VAST">
  <Ad id="w">
    <Wrapper{attributes}>
      <AdSystem>w</AdSystem>
      <Impression><![CDATA[http://w.invalid/impression]]></Impression>
      <VASTAdTagURI><![CDATA[{uri}]]></VASTAdTagURI>
      {body}
    </Wrapper>
  </Ad>
</VAST>"""


async def resolve(server: VastServer, context: SessionContext, url: str) -> VastResult:
    async with VastUpstream(fire_error_pixels=False) as upstream:
        result = await upstream.fetch(url, context=context)
    assert result.status == "inline", result.errors
    return result


def tree(result: VastResult) -> etree._Element:
    assert result.vast is not None
    return etree.fromstring(result.vast.encode())


def texts(root: etree._Element, name: str) -> list[str]:
    return [(node.text or "").strip() for node in root.iter(name, NS + name)]


async def test_a_wrappers_companions_are_served_as_companions(
    server: VastServer, context: SessionContext
) -> None:
    end = server.add(vast(inline(ad_id="in")))
    companions = """<Creatives><Creative id="wc"><CompanionAds>
      <Companion width="300" height="250">
        <StaticResource creativeType="image/png"><![CDATA[http://w.invalid/c.png]]></StaticResource>
        <CompanionClickThrough><![CDATA[http://w.invalid/through]]></CompanionClickThrough>
        <CompanionClickTracking><![CDATA[http://w.invalid/click]]></CompanionClickTracking>
      </Companion></CompanionAds></Creative></Creatives>"""
    result = await resolve(server, context, server.add(wrapper_of(end, companions)))

    (ad,) = result.ads
    companion = ad.creatives[0]
    assert (companion.kind, companion.id) == ("companion", "wc")
    assert companion.click_tracking == ("http://w.invalid/click",)
    assert companion.click_through == "http://w.invalid/through"
    document = tree(result)
    (creative,) = [c for c in document.iter("Creative") if c.get("id") == "wc"]
    assert texts(creative, "StaticResource") == ["http://w.invalid/c.png"]
    assert texts(creative, "CompanionClickTracking") == ["http://w.invalid/click"]
    assert len(list(document.iter("Creative"))) == 2  # the InLine's linear and the companion


async def test_macros_for_whoever_fires_stay_templates(
    server: VastServer, context: SessionContext
) -> None:
    verification = """<AdVerifications><Verification vendor="v">
      <JavaScriptResource apiFramework="omid"><![CDATA[http://v.invalid/v.js]]></JavaScriptResource>
      <TrackingEvents><Tracking event="verificationNotExecuted">
        <![CDATA[http://v.invalid/nx?reason=[REASON]]]></Tracking></TrackingEvents>
    </Verification></AdVerifications>"""
    document = vast(
        inline(
            impression="http://i.invalid/imp?asset=[ASSETURI]&cb=[CACHEBUSTING]",
            tracking=[("progress", "http://i.invalid/p?at=[ADPLAYHEAD]")],
            click_tracking=["http://i.invalid/click?ts=[TIMESTAMP]"],
        )
    ).replace("</Impression>", "</Impression>" + verification, 1)
    result = await resolve(server, context, server.add(document))

    (ad,) = result.ads
    assert ad.impressions == ("http://i.invalid/imp?asset=[ASSETURI]&cb=[CACHEBUSTING]",)
    (linear,) = ad.creatives
    assert [t.url for t in linear.tracking] == ["http://i.invalid/p?at=[ADPLAYHEAD]"]
    assert linear.click_tracking == ("http://i.invalid/click?ts=[TIMESTAMP]",)
    root = tree(result)
    assert texts(root, "Tracking") == [
        "http://v.invalid/nx?reason=[REASON]",
        "http://i.invalid/p?at=[ADPLAYHEAD]",
    ]
    assert texts(root, "ClickTracking") == ["http://i.invalid/click?ts=[TIMESTAMP]"]


async def test_a_wrappers_viewable_impressions_are_kept(
    server: VastServer, context: SessionContext
) -> None:
    viewable = """<ViewableImpression id="w">
      <Viewable><![CDATA[http://w.invalid/viewable]]></Viewable>
      <ViewUndetermined><![CDATA[http://w.invalid/undetermined]]></ViewUndetermined>
    </ViewableImpression>"""
    end = server.add(vast(inline()))
    result = await resolve(server, context, server.add(wrapper_of(end, viewable)))

    (ad,) = result.ads
    assert ad.viewable_impression is not None
    assert ad.viewable_impression.viewable == ("http://w.invalid/viewable",)
    assert ad.viewable_impression.view_undetermined == ("http://w.invalid/undetermined",)
    root = tree(result)
    assert texts(root, "Viewable") == ["http://w.invalid/viewable"]
    assert texts(root, "ViewUndetermined") == ["http://w.invalid/undetermined"]


async def test_the_document_holds_only_the_ads_the_chain_selected(
    server: VastServer, context: SessionContext
) -> None:
    # The Wrapper does not allow multiple ads: the pod ad is excluded, the stand-alone one
    # is served, and the document must not offer the pod to a player that plays pods.
    end = server.add(vast(inline(ad_id="pod-1", sequence=1), inline(ad_id="alone")))
    result = await resolve(server, context, server.add(wrapper_of(end)))

    assert [ad.id for ad in result.ads] == ["alone"]
    ads = [child for child in tree(result) if child.tag == NS + "Ad" or child.tag == "Ad"]
    assert [ad.get("id") for ad in ads] == ["alone"]
    assert "pod-1" not in (result.vast or "")
    assert ads[0].find("InLine") is not None and ads[0].get("sequence") is None
    # The Wrapper's impression is merged into the one document.
    assert texts(ads[0], "Impression") == [
        "http://w.invalid/impression",
        "http://pixels.invalid/impression",
    ]


async def test_urls_other_than_http_are_dropped_and_counted(
    server: VastServer, context: SessionContext
) -> None:
    document = vast(
        inline(
            impression="javascript:alert(1)",
            tracking=[("start", " JaVa\tScRiPt:alert(2)"), ("complete", "http://ok.invalid/c")],
            click_tracking=["data:text/html,x", "//cdn.invalid/relative-is-kept"],
            media="file:///etc/passwd",
        )
    ).replace("</MediaFile>", "</MediaFile><MediaFile>https://ok.invalid/a.mp4</MediaFile>", 1)
    result = await resolve(server, context, server.add(document))

    (ad,) = result.ads
    assert ad.impressions == ()
    (linear,) = ad.creatives
    assert [t.url for t in linear.tracking] == ["http://ok.invalid/c"]
    assert linear.click_tracking == ("//cdn.invalid/relative-is-kept",)
    assert [m.url for m in linear.media_files] == ["https://ok.invalid/a.mp4"]
    assert ad.unsafe_urls == 4
    text = result.vast or ""
    for scheme in ("javascript:", "JaVa", "data:", "file:"):
        assert scheme not in text
