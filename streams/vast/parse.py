"""Bytes in, `Document` out: VAST 2.0 to 4.x, with or without IAB's XML namespace.

Pure and synchronous: no I/O, so every rule here is unit-testable. Hostile input is stopped
before lxml sees it: a DTD (the carrier of XXE and entity-expansion attacks) is refused from
the prolog, and only ASCII-compatible encodings are accepted so that prolog check cannot be
dodged by re-encoding. The parser itself resolves no entities, loads nothing from the network
and keeps libxml2's size and depth limits (`huge_tree` off). A document may hold at most
`max_ads` ads, and reading one stops at the chain's deadline.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

from lxml import etree

from models.ad import Creative, CreativeKind, MediaFile, Tracking, ViewableImpression
from streams.vast.deadline import NO_DEADLINE, Deadline
from streams.vast.document import Ad, Document, Wrapper
from streams.vast.errors import (
    DocumentError,
    ForbiddenDoctype,
    SchemaError,
    TooManyAds,
    UnsupportedVersion,
)

DEFAULT_MAX_ADS = 50
"""Ads one document may hold, pod and stand-alone ads together: more than any ad break plays."""
VAST_NAMESPACE = "http://www.iab.com/VAST"
SUPPORTED_MAJOR_VERSIONS = frozenset({"2", "3", "4"})

_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    huge_tree=False,
    remove_comments=True,
    remove_pis=True,
    collect_ids=False,
)

# The prolog: an optional XML declaration, then whitespace, comments and processing
# instructions. Nothing follows the repetition, so a failed alternative never backtracks.
_PROLOG = re.compile(rb"(?:<\?xml(?P<decl>[^>]*)\?>)?(?:\s+|<!--.*?-->|<\?.*?\?>)*", re.S)
_ENCODING = re.compile(rb"""encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_UTF8_BOM = b"\xef\xbb\xbf"
# Encodings in which "<!DOCTYPE" is the same bytes as in ASCII: everything VAST is served in.
_ASCII_COMPATIBLE = frozenset(
    {"utf-8", "utf8", "us-ascii", "ascii", "latin1", "latin-1", "cp1252"}
    | {f"iso-8859-{n}" for n in range(1, 16)}
    | {f"windows-125{n}" for n in range(9)}
)


class Parsed(NamedTuple):
    document: Document
    elements: tuple[etree._Element, ...]
    """The `<Ad>` element of each of `document.ads`, in the same order: what unwrapping
    (`streams.vast.unwrap`) copies from."""


def parse_vast(
    body: bytes, *, max_ads: int = DEFAULT_MAX_ADS, deadline: Deadline = NO_DEADLINE
) -> Document:
    """Parse one VAST response. Raises `DocumentError` (100), `SchemaError` (101; `TooManyAds`
    past `max_ads`), `UnsupportedVersion` (102) or `DeadlinePassed` (301); never anything
    else."""
    return parse_tree(body, max_ads=max_ads, deadline=deadline).document


def parse_tree(
    body: bytes, *, max_ads: int = DEFAULT_MAX_ADS, deadline: Deadline = NO_DEADLINE
) -> Parsed:
    """`parse_vast`, with the element of each ad kept."""
    encoding = _check_prolog(body)
    try:
        root = etree.fromstring(body, _PARSER)
    except (etree.LxmlError, ValueError) as exc:
        raise DocumentError(f"not well-formed XML: {exc}") from None
    deadline.check("while parsing")
    namespace, _, name = root.tag[1:].rpartition("}") if root.tag[0] == "{" else ("", "", root.tag)
    if name == "VideoAdServingTemplate":
        raise UnsupportedVersion("VAST 1.0 (VideoAdServingTemplate) is not supported")
    if name != "VAST" or namespace not in ("", VAST_NAMESPACE):
        raise SchemaError(f"root element is {root.tag!r}, not VAST")
    version = (root.get("version") or "").strip()
    if version.partition(".")[0] not in SUPPORTED_MAJOR_VERSIONS:
        raise UnsupportedVersion(f"VAST version {version!r} is not supported")
    tags = _tags(namespace)
    ads: list[Ad] = []
    elements: list[etree._Element] = []
    errors: list[str] = []
    for child in root:
        tag = child.tag
        if tag == tags.ad:
            if len(ads) == max_ads:
                # Refused rather than cut: the first ads of a larger pod are not the ad break
                # the upstream meant, and a player would play them as if they were.
                raise TooManyAds(f"more than {max_ads} ads in one document")
            # Checked per ad: the deadline is overrun by at most one ad's reading.
            deadline.check("while reading the document's ads")
            ads.append(_ad(child, tags))
            elements.append(child)
        elif tag == tags.error:
            _append_url(errors, child)
    document = Document(
        version=version,
        ads=tuple(ads),
        errors=tuple(errors),
        encoding=encoding,
        namespace=namespace,
    )
    return Parsed(document, tuple(elements))


def _check_prolog(body: bytes) -> str:
    """The document's encoding; raises if it declares a DTD or is not ASCII-compatible."""
    start = len(_UTF8_BOM) if body.startswith(_UTF8_BOM) else 0
    if b"\x00" in body[start : start + 4]:
        raise DocumentError("UTF-16 and UTF-32 documents are not supported")
    prolog = _PROLOG.match(body, start)
    assert prolog is not None  # every part of the pattern may match nothing
    encoding = "utf-8"
    declaration = prolog["decl"]
    if declaration:
        declared = _ENCODING.search(declaration)
        if declared:
            encoding = declared[1].decode("ascii").lower()
            if encoding not in _ASCII_COMPATIBLE:
                raise DocumentError(f"unsupported encoding {encoding!r}")
    if body[prolog.end() : prolog.end() + 9].upper() == b"<!DOCTYPE":
        raise ForbiddenDoctype("document type declarations are refused")
    return encoding


class _Tags:
    """Element names in the document's namespace, resolved once per namespace.

    Children are walked in one pass and told apart by name, with plain iteration: lxml's
    `find` and `iterfind` go through its Python ElementPath, and even `iterchildren(tag)` builds
    a tag matcher per call (~2 us, as long as walking the whole document).
    """

    def __init__(self, namespace: str) -> None:
        prefix = f"{{{namespace}}}" if namespace else ""
        self.ad = prefix + "Ad"
        self.error = prefix + "Error"
        self.inline = prefix + "InLine"
        self.wrapper = prefix + "Wrapper"
        self.ad_system = prefix + "AdSystem"
        self.ad_title = prefix + "AdTitle"
        self.impression = prefix + "Impression"
        self.creatives = prefix + "Creatives"
        self.creative = prefix + "Creative"
        self.ad_tag_uri = prefix + "VASTAdTagURI"
        self.legacy_ad_tag_url = prefix + "VASTAdTagURL"
        self.url = prefix + "URL"
        self.linear = prefix + "Linear"
        self.nonlinear_ads = prefix + "NonLinearAds"
        self.nonlinear = prefix + "NonLinear"
        self.companion_ads = prefix + "CompanionAds"
        self.companion = prefix + "Companion"
        self.tracking_events = prefix + "TrackingEvents"
        self.tracking = prefix + "Tracking"
        self.duration = prefix + "Duration"
        self.media_files = prefix + "MediaFiles"
        self.media_file = prefix + "MediaFile"
        self.video_clicks = prefix + "VideoClicks"
        self.click_through = prefix + "ClickThrough"
        self.click_tracking = prefix + "ClickTracking"
        self.custom_click = prefix + "CustomClick"
        self.nonlinear_click_through = prefix + "NonLinearClickThrough"
        self.nonlinear_click_tracking = prefix + "NonLinearClickTracking"
        self.companion_click_through = prefix + "CompanionClickThrough"
        self.companion_click_tracking = prefix + "CompanionClickTracking"
        self.viewable_impression = prefix + "ViewableImpression"
        self.viewable = prefix + "Viewable"
        self.not_viewable = prefix + "NotViewable"
        self.view_undetermined = prefix + "ViewUndetermined"


@functools.cache
def _tags(namespace: str) -> _Tags:
    return _Tags(namespace)


def _ad(element: etree._Element, tags: _Tags) -> Ad:
    body = _first_child(element, tags.inline, tags.wrapper)
    if body is None:
        raise SchemaError("an Ad holds neither InLine nor Wrapper")
    ad_system = ad_title = ad_tag_uri = None
    impressions: list[str] = []
    errors: list[str] = []
    creatives: list[Creative] = []
    viewable = None
    for child in body:
        tag = child.tag
        if tag == tags.impression:
            _append_url(impressions, child)
        elif tag == tags.error:
            _append_url(errors, child)
        elif tag == tags.viewable_impression:
            viewable = _viewable_impression(child, tags)
        elif tag == tags.creatives:
            for node in child:
                if node.tag == tags.creative:
                    creative = _creative(node, tags)
                    if creative is not None:
                        creatives.append(creative)
        elif tag == tags.ad_system:
            ad_system = _text(child)
        elif tag == tags.ad_title:
            ad_title = _text(child)
        elif tag == tags.ad_tag_uri:
            ad_tag_uri = _text(child)
        elif tag == tags.legacy_ad_tag_url and ad_tag_uri is None:
            # VAST 2.0 documents sometimes still use VAST 1.0's <VASTAdTagURL><URL>.
            ad_tag_uri = _text(_first_child(child, tags.url))
    wrapper = None
    if body.tag == tags.wrapper:
        if not ad_tag_uri:
            raise SchemaError("a Wrapper without VASTAdTagURI")
        wrapper = Wrapper(
            ad_tag_uri=ad_tag_uri,
            follow_additional_wrappers=_bool(body.get("followAdditionalWrappers")) is not False,
            allow_multiple_ads=_bool(body.get("allowMultipleAds")) is True,
            fallback_on_no_ad=_bool(body.get("fallbackOnNoAd")),
        )
    return Ad(
        id=element.get("id"),
        sequence=_int(element.get("sequence")),
        ad_system=ad_system,
        ad_title=ad_title,
        impressions=tuple(impressions),
        errors=tuple(errors),
        creatives=tuple(creatives),
        viewable_impression=viewable,
        wrapper=wrapper,
    )


def _viewable_impression(element: etree._Element, tags: _Tags) -> ViewableImpression:
    viewable: list[str] = []
    not_viewable: list[str] = []
    undetermined: list[str] = []
    for child in element:
        tag = child.tag
        if tag == tags.viewable:
            _append_url(viewable, child)
        elif tag == tags.not_viewable:
            _append_url(not_viewable, child)
        elif tag == tags.view_undetermined:
            _append_url(undetermined, child)
    return ViewableImpression(tuple(viewable), tuple(not_viewable), tuple(undetermined))


def _creative(element: etree._Element, tags: _Tags) -> Creative | None:
    content = _first_child(element, tags.linear, tags.nonlinear_ads, tags.companion_ads)
    if content is None:
        # A creative of a kind we do not know (an extension) carries nothing we resolve.
        return None
    tracking: list[Tracking] = []
    click_tracking: list[str] = []
    custom_clicks: list[str] = []
    media_files: list[MediaFile] = []
    click_through = duration = None
    kind: CreativeKind
    if content.tag == tags.linear:
        kind = "linear"
        for child in content:
            tag = child.tag
            if tag == tags.tracking_events:
                _append_tracking(tracking, child, tags)
            elif tag == tags.media_files:
                _append_media_files(media_files, child, tags)
            elif tag == tags.video_clicks:
                for click in child:
                    if click.tag == tags.click_tracking:
                        _append_url(click_tracking, click)
                    elif click.tag == tags.custom_click:
                        _append_url(custom_clicks, click)
                    elif click.tag == tags.click_through:
                        click_through = _url(click)
            elif tag == tags.duration:
                duration = _text(child)
    elif content.tag == tags.nonlinear_ads:
        kind = "nonlinear"
        for child in content:
            if child.tag == tags.tracking_events:
                _append_tracking(tracking, child, tags)
            elif child.tag == tags.nonlinear:
                for click in child:
                    if click.tag == tags.nonlinear_click_tracking:
                        _append_url(click_tracking, click)
                    elif click.tag == tags.nonlinear_click_through and click_through is None:
                        click_through = _url(click)
    else:
        kind = "companion"
        for companion in content:
            if companion.tag != tags.companion:
                continue
            for child in companion:
                if child.tag == tags.tracking_events:
                    _append_tracking(tracking, child, tags)
                elif child.tag == tags.companion_click_tracking:
                    _append_url(click_tracking, child)
                elif child.tag == tags.companion_click_through and click_through is None:
                    click_through = _url(child)
    return Creative(
        kind=kind,
        id=element.get("id"),
        ad_id=element.get("adId") or element.get("AdID") or element.get("adID"),
        sequence=_int(element.get("sequence")),
        api_framework=element.get("apiFramework"),
        duration=duration,
        skip_offset=content.get("skipoffset"),
        media_files=tuple(media_files),
        tracking=tuple(tracking),
        click_through=click_through,
        click_tracking=tuple(click_tracking),
        custom_clicks=tuple(custom_clicks),
    )


def _append_media_files(into: list[MediaFile], media_files: etree._Element, tags: _Tags) -> None:
    for node in media_files:
        url = _url(node) if node.tag == tags.media_file else None
        if url:
            get = node.get
            into.append(
                MediaFile(
                    url=url,
                    delivery=get("delivery"),
                    type=get("type"),
                    width=_int(get("width")),
                    height=_int(get("height")),
                    bitrate=_int(get("bitrate")),
                    codec=get("codec"),
                    api_framework=get("apiFramework"),
                    id=get("id"),
                )
            )


def _append_tracking(into: list[Tracking], events: etree._Element, tags: _Tags) -> None:
    for node in events:
        if node.tag != tags.tracking:
            continue
        event = node.get("event")
        url = _url(node)
        if event and url:
            into.append(Tracking(event=event, url=url, offset=node.get("offset")))


def _first_child(element: etree._Element, *tags: str) -> etree._Element | None:
    for child in element:
        if child.tag in tags:
            return child
    return None


def _append_url(into: list[str], node: etree._Element) -> None:
    url = _url(node)
    if url:
        into.append(url)


def _url(node: etree._Element) -> str | None:
    """The URL `node` holds, if it is one to hand on (`is_safe_url`)."""
    url = _text(node)
    return url if url is None or is_safe_url(url) else None


# A scheme as RFC 3986 spells it; browsers drop tabs and newlines inside one before reading it
# ("java\tscript:"), so those are removed first.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_SAFE_SCHEMES = frozenset({"http", "https"})
_IGNORED_IN_SCHEME = str.maketrans("", "", "\t\n\r")
_LEADING_IGNORED = "".join(map(chr, range(33)))  # C0 controls and space, as URL parsers do


def is_safe_url(url: str) -> bool:
    """Whether a URL handed on to a player may be: http or https, or no scheme at all (relative,
    or starting with a macro). `javascript:`, `data:`, `file:` and every other scheme are not:
    a player that fires or opens them runs or reads what the upstream chose."""
    if url.startswith(("https://", "http://")):  # nearly every URL: decided without work
        return True
    before, colon, _ = url.lstrip(_LEADING_IGNORED).partition(":")
    scheme = before.translate(_IGNORED_IN_SCHEME)
    return not colon or not _SCHEME.fullmatch(scheme) or scheme.lower() in _SAFE_SCHEMES


def _text(node: etree._Element | None) -> str | None:
    if node is None:
        return None
    text = node.text  # built anew by lxml on every read: read it once
    return None if text is None else text.strip() or None


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _bool(value: str | None) -> bool | None:
    """xs:boolean, read leniently (case ignored); None when absent or unrecognised."""
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    return None
