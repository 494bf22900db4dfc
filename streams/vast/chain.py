"""The rules of a wrapper chain, pure: which ads of a response to resolve, and how an InLine ad
absorbs the Wrappers above it (IAB VAST 4.x, 2.3.3 and 2.4.4).

No I/O here; `streams.vast.upstream` fetches and calls these.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, TypeVar

import msgspec

from streams.macros import ExpansionTooLong, Macros
from streams.vast.deadline import NO_DEADLINE, Deadline
from streams.vast.document import (
    Ad,
    Creative,
    CreativeKind,
    Document,
    MediaFile,
    Tracking,
    Wrapper,
)
from streams.vast.errors import NoAdError, ResponseTooLarge, WrapperError
from streams.vast.result import ResolvedAd

_HasUrl = TypeVar("_HasUrl", MediaFile, Tracking)

DEFAULT_MAX_AD_CHARS = 1_000_000
"""What one resolved ad may hold: its document and URLs, macros substituted. Kept in
characters, each at least one byte once encoded, with the least JSON adds to every URL
(`_JSON_CHARS_PER_URL`), so an ad within it may still not fit an event, but one past it never
could."""
_JSON_CHARS_PER_URL = 3  # two quotes and a comma


class Rules(msgspec.Struct, frozen=True):
    """What the requester of a response accepts: a Wrapper's attributes, or the caller's."""

    allow_multiple_ads: bool
    follow_additional_wrappers: bool = True

    @classmethod
    def of(cls, wrapper: Wrapper) -> Rules:
        return cls(wrapper.allow_multiple_ads, wrapper.follow_additional_wrappers)


class Plan(NamedTuple):
    targets: list[Ad]
    """The ads to resolve: a pod in sequence order, or one stand-alone ad."""
    fallbacks: deque[Ad]
    """Stand-alone ads (the buffet) that may replace a target that fails."""


def plan(document: Document, rules: Rules) -> Plan:
    """The ads of `document` to resolve under `rules`. Raises NoAdError (303) for an empty
    response, WrapperError (300) when the rules exclude every ad."""
    if not document.ads:
        raise NoAdError("the response holds no ad")
    ads = document.ads
    if not rules.follow_additional_wrappers:
        ads = tuple(ad for ad in ads if ad.wrapper is None)
        if not ads:
            raise WrapperError("followAdditionalWrappers is false and only Wrappers came back")
    pod = sorted((ad for ad in ads if ad.sequence is not None), key=_sequence)
    buffet = [ad for ad in ads if ad.sequence is None]
    if pod and rules.allow_multiple_ads:
        return Plan(pod, deque(buffet))
    if buffet:
        return Plan(buffet[:1], deque(buffet[1:]))
    # IAB allows only a stand-alone ad here; a lone ad numbered as a pod of one is taken as
    # one, since ad servers commonly mark single ads sequence="1".
    if len(pod) == 1:
        return Plan(pod, deque())
    raise WrapperError("allowMultipleAds is false and only an ad pod came back")


def _sequence(ad: Ad) -> int:
    return ad.sequence or 0


def may_fall_back(ad: Ad) -> bool:
    """Whether a stand-alone ad may replace `ad` after it failed: not if it is a Wrapper that
    says fallbackOnNoAd="false"."""
    return ad.wrapper is None or ad.wrapper.fallback_on_no_ad is not False


def error_urls(wrappers: Sequence[Ad], *more: Iterable[str]) -> list[str]:
    """The `<Error>` URLs to report a failure to: every Wrapper's above it, then `more`."""
    urls = [url for wrapper in wrappers for url in wrapper.errors]
    for group in more:
        urls.extend(group)
    return urls


def expand_document(text: str, macros: Macros, max_chars: int) -> str:
    """The document an InLine's ads are served with: `text`, macros substituted. Done once per
    document and request, however many of its ads resolve. Raises ResponseTooLarge (100) past
    `max_chars`."""
    try:
        return macros.expand(text, in_xml=True, max_chars=max_chars)
    except ExpansionTooLong as exc:
        raise ResponseTooLarge(f"the document, macros substituted, is too large: {exc}") from None


def resolve_ad(
    inline: Ad,
    wrappers: Sequence[Ad],
    macros: Macros,
    vast: str,
    *,
    max_chars: int = DEFAULT_MAX_AD_CHARS,
    deadline: Deadline = NO_DEADLINE,
) -> ResolvedAd:
    """`inline` with `wrappers` (outermost first) merged in, every URL's macros substituted.

    `vast` is the InLine's document, macros substituted already (`expand_document`): the ad
    refers to it, and expands only the URLs it holds itself. Raises ResponseTooLarge (100) when
    the document and the ad's URLs, with what JSON adds to each, pass `max_chars`, before
    building more; DeadlinePassed (301) when the deadline passes while merging.

    The order is vast-client-js's: impressions and errors from the outermost Wrapper inwards,
    then the InLine's own; a creative's tracking and clicks its own first, then each Wrapper's
    creatives of the same kind from the innermost outwards.
    """
    # List comprehensions rather than generators throughout: a generator resumes per item.
    expand = _Budget(macros, max_chars - len(vast)).expand
    inherited = _inherited(wrappers)
    chain = (*wrappers, inline)
    impressions = tuple([expand(url) for ad in chain for url in ad.impressions])
    errors = tuple([expand(url) for ad in chain for url in ad.errors])
    creatives = []
    for creative in inline.creatives:
        # Each creative takes in every Wrapper's of its kind: checked per creative, since
        # that product, not any one document, is what can grow.
        deadline.check("while merging Wrappers into the ad")
        creatives.append(_merge(creative, inherited, expand))
    return ResolvedAd(
        id=inline.id,
        sequence=inline.sequence,
        ad_system=inline.ad_system,
        ad_title=inline.ad_title,
        impressions=impressions,
        errors=errors,
        creatives=tuple(creatives),
        vast=vast,
        wrappers=len(wrappers),
    )


class _Budget:
    """What an ad may still hold, in characters: every URL is expanded within it."""

    __slots__ = ("left", "macros")

    def __init__(self, macros: Macros, left: int) -> None:
        self.macros = macros
        self.left = left

    def expand(self, url: str) -> str:
        try:
            expanded = self.macros.expand(url, max_chars=self.left - _JSON_CHARS_PER_URL)
        except ExpansionTooLong:
            raise ResponseTooLarge("the ad's document and URLs are too large") from None
        self.left -= len(expanded) + _JSON_CHARS_PER_URL
        return expanded


class _Inherited:
    __slots__ = ("click_through", "click_tracking", "custom_clicks", "tracking")

    def __init__(self) -> None:
        self.tracking: list[Tracking] = []
        self.click_tracking: list[str] = []
        self.custom_clicks: list[str] = []
        self.click_through: str | None = None


def _inherited(wrappers: Sequence[Ad]) -> dict[CreativeKind, _Inherited]:
    """Per creative kind, what the Wrappers' creatives add, innermost Wrapper first."""
    inherited: dict[CreativeKind, _Inherited] = {}
    for wrapper in reversed(wrappers):
        for creative in wrapper.creatives:
            extra = inherited.get(creative.kind)
            if extra is None:
                extra = inherited[creative.kind] = _Inherited()
            extra.tracking.extend(creative.tracking)
            extra.click_tracking.extend(creative.click_tracking)
            extra.custom_clicks.extend(creative.custom_clicks)
            extra.click_through = extra.click_through or creative.click_through
    return inherited


def _merge(
    creative: Creative, inherited: dict[CreativeKind, _Inherited], expand: Callable[[str], str]
) -> Creative:
    extra = inherited.get(creative.kind)
    tracking: Iterable[Tracking] = creative.tracking
    click_tracking: Iterable[str] = creative.click_tracking
    custom_clicks: Iterable[str] = creative.custom_clicks
    click_through = creative.click_through
    if extra is not None:
        tracking = [*tracking, *extra.tracking]
        click_tracking = [*click_tracking, *extra.click_tracking]
        custom_clicks = [*custom_clicks, *extra.custom_clicks]
        # VAST 2.0 players take a Wrapper's ClickThrough when the InLine has none.
        click_through = click_through or extra.click_through
    return msgspec.structs.replace(
        creative,
        media_files=tuple([_with_url(media, expand) for media in creative.media_files]),
        tracking=tuple([_with_url(event, expand) for event in tracking]),
        click_through=None if click_through is None else expand(click_through),
        click_tracking=tuple([expand(url) for url in click_tracking]),
        custom_clicks=tuple([expand(url) for url in custom_clicks]),
    )


def _with_url(item: _HasUrl, expand: Callable[[str], str]) -> _HasUrl:
    url = expand(item.url)
    # Most URLs hold no macro, and expand() then returns the very same string: no copy.
    return item if url is item.url else msgspec.structs.replace(item, url=url)
