"""Unwrapping: the ads a request resolved as one self-contained VAST document, built with lxml.

A player given only this document fires every pixel the wrapper chain asked for: each served
`<Ad>` is a copy of its InLine with every Wrapper above it merged in, in vast-client-js's
order (impressions, errors and extensions outermost Wrapper first, before the InLine's own;
viewable impressions, verifications, tracking and clicks after the InLine's own, innermost
Wrapper first). A Wrapper's companions stay companions, ahead of the InLine's creatives, and
its `CompanionClickTracking` is added to every companion below it. Only http(s) URLs are handed
on: an element holding a URL of another scheme (`javascript:`, `data:`, `file:`...) is removed
and counted. Macros stay templates for whoever fires the URL (`streams.macros.expand`).

Pure: elements in, elements out; nothing here reads or writes anything else. New elements go
where IAB's vast_4.2.xsd orders them, so a document that validated still does.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable, Sequence
from typing import Any

from lxml import etree

from streams.vast.parse import is_safe_url

# Children in the order of IAB's vast_4.2.xsd, per parent: new elements go after the last
# child ranked at or before them.
_INLINE_ORDER = (
    "AdSystem", "Error", "Extensions", "Impression", "Pricing", "ViewableImpression",
    "AdServingId", "AdTitle", "AdVerifications", "Advertiser", "Category", "Creatives",
    "Description", "Expires", "Survey",
)  # fmt: skip
_LINEAR_ORDER = ("Icons", "TrackingEvents", "AdParameters", "Duration", "MediaFiles", "VideoClicks")
_VIDEO_CLICKS_ORDER = ("ClickTracking", "ClickThrough", "CustomClick")
_NONLINEAR_ADS_ORDER = ("TrackingEvents", "NonLinear")
_NONLINEAR_ORDER = (
    "HTMLResource", "IFrameResource", "StaticResource", "AdParameters", "NonLinearClickThrough",
    "NonLinearClickTracking",
)  # fmt: skip
_COMPANION_ORDER = (
    "HTMLResource", "IFrameResource", "StaticResource", "AdParameters", "AltText",
    "CompanionClickThrough", "CompanionClickTracking", "CreativeExtensions", "TrackingEvents",
)  # fmt: skip
_VIEWABLE_ORDER = ("Viewable", "NotViewable", "ViewUndetermined")

# Every element whose text is a URL a player requests, opens or runs.
_URL_ELEMENTS = (
    "Impression", "Error", "Tracking", "ClickThrough", "ClickTracking", "CustomClick",
    "MediaFile", "Mezzanine", "InteractiveCreativeFile", "ClosedCaptionFile",
    "NonLinearClickThrough", "NonLinearClickTracking", "CompanionClickThrough",
    "CompanionClickTracking", "IconClickThrough", "IconClickTracking", "IconViewTracking",
    "Viewable", "NotViewable", "ViewUndetermined", "JavaScriptResource", "ExecutableResource",
    "StaticResource", "IFrameResource",
)  # fmt: skip


class _Names:
    """Full tags and child ranks in one namespace, resolved once per namespace."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.prefix = prefix = f"{{{namespace}}}" if namespace else ""
        for name in {
            *_INLINE_ORDER, *_LINEAR_ORDER, *_VIDEO_CLICKS_ORDER, *_NONLINEAR_ADS_ORDER,
            *_NONLINEAR_ORDER, *_COMPANION_ORDER, *_VIEWABLE_ORDER,
            "VAST", "Ad", "InLine", "Wrapper", "Creative", "Linear", "NonLinearAds",
            "CompanionAds", "Companion", "Extension", "Verification", "Tracking",
            "UniversalAdId",
        }:  # fmt: skip
            setattr(self, name, prefix + name)
        self.inline_ranks = _ranks(prefix, _INLINE_ORDER)
        self.linear_ranks = _ranks(prefix, _LINEAR_ORDER)
        self.video_clicks_ranks = _ranks(prefix, _VIDEO_CLICKS_ORDER)
        self.nonlinear_ads_ranks = _ranks(prefix, _NONLINEAR_ADS_ORDER)
        self.nonlinear_ranks = _ranks(prefix, _NONLINEAR_ORDER)
        self.companion_ranks = _ranks(prefix, _COMPANION_ORDER)
        self.viewable_ranks = _ranks(prefix, _VIEWABLE_ORDER)
        self.url_elements = tuple(prefix + name for name in _URL_ELEMENTS)

    def __getattr__(self, name: str) -> str:  # for mypy: the tags set in __init__
        raise AttributeError(name)


def _ranks(prefix: str, order: Sequence[str]) -> dict[str, int]:
    return {prefix + name: rank for rank, name in enumerate(order)}


@functools.cache
def _names(namespace: str) -> _Names:
    return _Names(namespace)


class Unwrapped:
    """One served `<Ad>`, unwrapped, and how many URLs were dropped from it."""

    __slots__ = ("element", "namespace", "unsafe_urls", "version")

    def __init__(self, element: etree._Element, namespace: str, version: str, unsafe: int) -> None:
        self.element = element
        self.namespace = namespace
        self.version = version
        self.unsafe_urls = unsafe


class _Merge:
    """What the Wrappers above an InLine add to it, collected innermost Wrapper first."""

    __slots__ = (
        "click_through",
        "click_tracking",
        "companions",
        "custom_clicks",
        "errors",
        "extensions",
        "impressions",
        "linear_tracking",
        "nonlinear_click_tracking",
        "nonlinear_tracking",
        "verifications",
        "viewable",
    )

    def __init__(self) -> None:
        self.impressions: list[etree._Element] = []
        self.errors: list[etree._Element] = []
        self.extensions: list[etree._Element] = []
        self.viewable: list[etree._Element] = []
        self.verifications: list[etree._Element] = []
        self.linear_tracking: list[etree._Element] = []
        self.click_tracking: list[etree._Element] = []
        self.custom_clicks: list[etree._Element] = []
        self.click_through: etree._Element | None = None
        self.nonlinear_tracking: list[etree._Element] = []
        self.nonlinear_click_tracking: list[etree._Element] = []
        self.companions: list[tuple[list[etree._Element], list[etree._Element]]] = []
        """Per Wrapper, innermost first: its companion creatives and their click tracking."""


def unwrap_ad(
    inline: etree._Element,
    namespace: str,
    version: str,
    wrappers: Sequence[tuple[etree._Element, str]],
) -> Unwrapped:
    """A copy of the InLine `<Ad>` `inline` (in `namespace`, of a document of `version`) with
    `wrappers` (each `<Ad>` with its document's namespace, outermost first) merged in."""
    names = _names(namespace)
    ad = _copy(inline)
    ad.tail = None
    body = _child(ad, names.InLine)
    assert body is not None  # the parser read it as an InLine
    merge = _Merge()
    for element, wrapper_namespace in reversed(wrappers):
        _collect(element, _names(wrapper_namespace), names, merge)
    _apply(body, merge, names, needs_universal_ad_id=version.partition(".")[0] >= "4")
    return Unwrapped(ad, namespace, version, _drop_unsafe_urls(ad, names))


def document(ads: Sequence[Unwrapped], sequences: Sequence[int | None]) -> str:
    """The VAST document holding `ads` (a pod in sequence order, or one ad), each at its place
    in `sequences` (None: stand-alone), in the namespace and version of the first one's InLine;
    ads from documents of another namespace are moved into it."""
    first = ads[0]
    names = _names(first.namespace)
    # The document's namespace as the default one, as upstreams write it (no prefix).
    nsmap: dict[Any, str] | None = {None: first.namespace} if first.namespace else None
    root = etree.Element(names.VAST, nsmap=nsmap)
    root.set("version", first.version)
    for ad, sequence in zip(ads, sequences, strict=True):
        element = ad.element
        if ad.namespace != first.namespace:
            element = _moved(element, _names(ad.namespace), names)
        if sequence is None:
            if "sequence" in element.attrib:
                del element.attrib["sequence"]
        else:
            element.set("sequence", str(sequence))
        root.append(element)
    return etree.tostring(root, encoding="UTF-8", xml_declaration=True).decode()


def _collect(ad: etree._Element, own: _Names, into: _Names, merge: _Merge) -> None:
    """Add what the Wrapper `<Ad>` `ad` (tags in `own`) gives its InLine to `merge`, as copies
    in the InLine's namespace (`into`)."""
    body = _child(ad, own.Wrapper)
    if body is None:
        return
    impressions: list[etree._Element] = []
    errors: list[etree._Element] = []
    extensions: list[etree._Element] = []
    companions: list[etree._Element] = []
    for child in body:
        tag = child.tag
        if tag == own.Impression:
            impressions.append(_moved(child, own, into))
        elif tag == own.Error:
            errors.append(_moved(child, own, into))
        elif tag == own.Extensions:
            extensions.extend(
                _moved(node, own, into) for node in child if node.tag == own.Extension
            )
        elif tag == own.ViewableImpression:
            merge.viewable.extend(_moved(node, own, into) for node in child)
        elif tag == own.AdVerifications:
            merge.verifications.extend(
                _moved(node, own, into) for node in child if node.tag == own.Verification
            )
        elif tag == own.Creatives:
            for creative in child:
                if creative.tag == own.Creative:
                    _collect_creative(creative, own, into, merge, companions)
    # Outermost first: each Wrapper's go before those of the Wrappers below it.
    merge.impressions[:0] = impressions
    merge.errors[:0] = errors
    merge.extensions[:0] = extensions
    if companions:
        clicks = [
            node
            for creative in companions
            for node in creative.iter(into.CompanionClickTracking)
            if node.text and node.text.strip()
        ]
        merge.companions.append((companions, clicks))


def _collect_creative(
    creative: etree._Element,
    own: _Names,
    into: _Names,
    merge: _Merge,
    companions: list[etree._Element],
) -> None:
    for content in creative:
        tag = content.tag
        if tag == own.Linear:
            for child in content:
                if child.tag == own.TrackingEvents:
                    merge.linear_tracking.extend(_trackers(child, own, into))
                elif child.tag == own.VideoClicks:
                    for click in child:
                        if click.tag == own.ClickTracking:
                            merge.click_tracking.append(_moved(click, own, into))
                        elif click.tag == own.CustomClick:
                            merge.custom_clicks.append(_moved(click, own, into))
                        elif click.tag == own.ClickThrough and merge.click_through is None:
                            merge.click_through = _moved(click, own, into)
        elif tag == own.NonLinearAds:
            for child in content:
                if child.tag == own.TrackingEvents:
                    merge.nonlinear_tracking.extend(_trackers(child, own, into))
                elif child.tag == own.NonLinear:
                    merge.nonlinear_click_tracking.extend(
                        _moved(click, own, into)
                        for click in child
                        if click.tag == own.NonLinearClickTracking
                    )
        elif tag == own.CompanionAds:
            companions.append(_moved(creative, own, into))
            return


def _trackers(events: etree._Element, own: _Names, into: _Names) -> Iterable[etree._Element]:
    return [_moved(node, own, into) for node in events if node.tag == own.Tracking]


def _apply(
    body: etree._Element, merge: _Merge, names: _Names, *, needs_universal_ad_id: bool
) -> None:
    ranks = names.inline_ranks
    _prepend(body, names.Impression, merge.impressions, ranks)
    _prepend(body, names.Error, merge.errors, ranks)
    if merge.extensions:
        extensions = _child_or_new(body, names.Extensions, ranks)
        _prepend(extensions, names.Extension, merge.extensions, {names.Extension: 0})
    if merge.viewable:
        viewable = _child_or_new(body, names.ViewableImpression, ranks)
        for node in merge.viewable:
            _append(viewable, [node], names.viewable_ranks)
    if merge.verifications:
        verifications = _child_or_new(body, names.AdVerifications, ranks)
        _append(verifications, merge.verifications, {names.Verification: 0})
    creatives = _child(body, names.Creatives)
    if creatives is None:
        return
    for creative in creatives:
        for content in creative:
            if content.tag == names.Linear:
                _apply_linear(content, merge, names)
            elif content.tag == names.NonLinearAds:
                _apply_nonlinear(content, merge, names)
    for companions, clicks in merge.companions:  # innermost Wrapper first
        first = _child(creatives, names.Creative)
        for companion in companions:
            if needs_universal_ad_id and _child(companion, names.UniversalAdId) is None:
                # An InLine's creatives must name one (VAST 4.x); a Wrapper's need not, and
                # IAB's value for an id nobody gave is "unknown".
                universal = etree.SubElement(companion, names.UniversalAdId)
                universal.set("idRegistry", "unknown")
                universal.text = "unknown"
            if first is None:
                creatives.append(companion)
            else:
                first.addprevious(companion)
        if clicks:
            for creative in creatives:
                for content in creative:
                    if content.tag == names.CompanionAds:
                        for companion in content:
                            if companion.tag == names.Companion:
                                _add_unique_clicks(companion, clicks, names)


def _apply_linear(linear: etree._Element, merge: _Merge, names: _Names) -> None:
    if merge.linear_tracking:
        events = _child_or_new(linear, names.TrackingEvents, names.linear_ranks)
        events.extend(_copy(node) for node in merge.linear_tracking)
    clicks = [*merge.click_tracking, *merge.custom_clicks]
    through = merge.click_through
    video_clicks = _child(linear, names.VideoClicks)
    if through is not None and (
        video_clicks is None or _child(video_clicks, names.ClickThrough) is None
    ):
        clicks.append(through)  # VAST 2.0: a Wrapper's ClickThrough when the InLine has none
    if clicks:
        if video_clicks is None:
            video_clicks = _child_or_new(linear, names.VideoClicks, names.linear_ranks)
        _append(video_clicks, [_copy(node) for node in clicks], names.video_clicks_ranks)


def _apply_nonlinear(ads: etree._Element, merge: _Merge, names: _Names) -> None:
    if merge.nonlinear_tracking:
        events = _child_or_new(ads, names.TrackingEvents, names.nonlinear_ads_ranks)
        events.extend(_copy(node) for node in merge.nonlinear_tracking)
    if merge.nonlinear_click_tracking:
        for nonlinear in ads:
            if nonlinear.tag == names.NonLinear:
                _append(
                    nonlinear,
                    [_copy(node) for node in merge.nonlinear_click_tracking],
                    names.nonlinear_ranks,
                )


def _add_unique_clicks(
    companion: etree._Element, clicks: Sequence[etree._Element], names: _Names
) -> None:
    """vast-client-js's rule: a Wrapper's companion click trackers go to every companion, once."""
    seen = {
        (node.text or "").strip() for node in companion if node.tag == names.CompanionClickTracking
    }
    new = []
    for node in clicks:
        url = (node.text or "").strip()
        if url not in seen:
            seen.add(url)
            new.append(_copy(node))
    _append(companion, new, names.companion_ranks)


def _drop_unsafe_urls(ad: etree._Element, names: _Names) -> int:
    unsafe = [
        node
        for node in ad.iter(*names.url_elements)
        if node.text is not None and not is_safe_url(node.text.strip())
    ]
    for node in unsafe:
        parent = node.getparent()
        if parent is not None:
            parent.remove(node)
    return len(unsafe)


def _moved(element: etree._Element, own: _Names, into: _Names) -> etree._Element:
    """A copy of `element` with the tags of `own`'s namespace in `into`'s."""
    moved = _copy(element)
    moved.tail = None
    if own.namespace != into.namespace:
        prefix = own.prefix
        for node in moved.iter():
            tag = node.tag
            if isinstance(tag, str) and tag.startswith(prefix) and (prefix or tag[0] != "{"):
                node.tag = into.prefix + tag[len(prefix) :]
        # The copy keeps the source's namespace declarations, which would otherwise put the
        # moved tags back in the source's namespace when serialized.
        etree.cleanup_namespaces(moved)
    return moved


def _copy(element: etree._Element) -> etree._Element:
    """A copy of `element` and its subtree: lxml's `copy.copy` is deep already, and costs half
    of `copy.deepcopy`'s memo for the small elements merged here."""
    return copy.copy(element)


def _child(parent: etree._Element, tag: str) -> etree._Element | None:
    for child in parent:
        if child.tag == tag:
            return child
    return None


def _child_or_new(parent: etree._Element, tag: str, ranks: dict[str, int]) -> etree._Element:
    child = _child(parent, tag)
    if child is None:
        child = etree.Element(tag)
        _append(parent, [child], ranks)
    return child


def _prepend(
    parent: etree._Element, tag: str, elements: Sequence[etree._Element], ranks: dict[str, int]
) -> None:
    """`elements` (all of `tag`) before `parent`'s first child of that tag, or where the
    schema puts them if it has none."""
    if not elements:
        return
    first = _child(parent, tag)
    if first is None:
        _append(parent, elements, ranks)
        return
    for element in elements:
        first.addprevious(element)


def _append(
    parent: etree._Element, elements: Sequence[etree._Element], ranks: dict[str, int]
) -> None:
    """Each of `elements` after the last child of `parent` the schema orders at or before it
    (children it does not order are passed over); first if there is none."""
    for element in elements:
        rank = ranks.get(element.tag, len(ranks))
        anchor = None
        for child in parent:
            child_rank = ranks.get(child.tag) if isinstance(child.tag, str) else None
            if child_rank is not None and child_rank <= rank:
                anchor = child
        if anchor is None:
            parent.insert(0, element)
        else:
            anchor.addnext(element)
