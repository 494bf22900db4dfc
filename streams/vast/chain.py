"""The rules of a wrapper chain, pure: which ads of a response to resolve, and how an InLine ad
absorbs the Wrappers above it (IAB VAST 4.x, 2.3.3 and 2.4.4).

No I/O here; `streams.vast.upstream` fetches and calls these.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import msgspec

from models.ad import Creative, CreativeKind, ServedAd, Tracking, ViewableImpression
from streams.vast.deadline import NO_DEADLINE, Deadline
from streams.vast.document import Ad, Document, Wrapper
from streams.vast.errors import NoAdError, ResponseTooLarge, WrapperError
from streams.vast.result import ResolvedAd

DEFAULT_MAX_AD_CHARS = 1_000_000
"""What one resolved ad may hold: its document and URLs. Kept in
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


def resolve_ad(
    inline: Ad,
    wrappers: Sequence[Ad],
    *,
    max_chars: int = DEFAULT_MAX_AD_CHARS,
    deadline: Deadline = NO_DEADLINE,
) -> ResolvedAd:
    """`inline` with `wrappers` (outermost first) merged in: the typed view of the ad that
    `streams.vast.unwrap` builds the document of. URLs stay templates: their macros are for
    whoever fires them. Its `vast` is left empty, for the document of the whole selection.

    Raises ResponseTooLarge (100) when the ad's URLs, with what JSON adds to each, pass
    `max_chars`, before building more; DeadlinePassed (301) when the deadline passes while
    merging.

    The order is vast-client-js's: impressions and errors from the outermost Wrapper inwards,
    then the InLine's own; viewable impressions and a creative's tracking and clicks its own
    first, then each Wrapper's of the same kind from the innermost outwards. Wrappers'
    companions come first, outermost Wrapper first, and each one's companion click trackers go
    to every companion below it, once.
    """
    budget = _Budget(max_chars)
    take = budget.take
    inherited = _inherited(wrappers)
    chain = (*wrappers, inline)
    impressions = take([url for ad in chain for url in ad.impressions])
    errors = take([url for ad in chain for url in ad.errors])
    creatives: list[Creative] = []
    for creative in inline.creatives:
        # Each creative takes in every Wrapper's of its kind: checked per creative, since
        # that product, not any one document, is what can grow.
        deadline.check("while merging Wrappers into the ad")
        merged = _merge(creative, inherited)
        _take_creative(take, merged)
        creatives.append(merged)
    for wrapper in reversed(wrappers):
        companions = [creative for creative in wrapper.creatives if creative.kind == "companion"]
        if not companions:
            continue
        deadline.check("while merging Wrappers into the ad")
        for companion in companions:
            _take_creative(take, companion)
        creatives[:0] = companions
        clicks = [url for creative in companions for url in creative.click_tracking]
        if clicks:
            creatives = [
                _with_unique_clicks(creative, clicks, take)
                if creative.kind == "companion"
                else creative
                for creative in creatives
            ]
    return ResolvedAd(
        id=inline.id,
        sequence=inline.sequence,
        ad_system=inline.ad_system,
        ad_title=inline.ad_title,
        impressions=impressions,
        errors=errors,
        creatives=tuple(creatives),
        viewable_impression=_viewable(chain, take),
        wrappers=len(wrappers),
        vast="",
    )


def chars(ad: ServedAd) -> int:
    """What `ad`'s URLs take of an ad's `max_chars`."""
    budget = _Budget(sys.maxsize)
    take = budget.take
    take(ad.impressions)
    take(ad.errors)
    for creative in ad.creatives:
        _take_creative(take, creative)
    if ad.viewable_impression is not None:
        _take_viewable(take, ad.viewable_impression)
    return sys.maxsize - budget.left


class _Budget:
    """What an ad may still hold, in characters."""

    __slots__ = ("left",)

    def __init__(self, left: int) -> None:
        self.left = left

    def take(self, urls: Sequence[str]) -> tuple[str, ...]:
        self.left -= sum(map(len, urls)) + _JSON_CHARS_PER_URL * len(urls)
        if self.left < 0:
            raise ResponseTooLarge("the ad's document and URLs are too large")
        return tuple(urls)


def _take_creative(take: Callable[[Sequence[str]], object], creative: Creative) -> None:
    take([media.url for media in creative.media_files])
    take([event.url for event in creative.tracking])
    take(creative.click_tracking)
    take(creative.custom_clicks)
    if creative.click_through is not None:
        take([creative.click_through])


def _viewable(
    chain: Sequence[Ad], take: Callable[[Sequence[str]], object]
) -> ViewableImpression | None:
    """The chain's viewable impressions in one: the InLine's, then each Wrapper's from the
    innermost outwards."""
    parts = [ad.viewable_impression for ad in reversed(chain) if ad.viewable_impression]
    if not parts:
        return None
    merged = ViewableImpression(
        viewable=tuple([url for part in parts for url in part.viewable]),
        not_viewable=tuple([url for part in parts for url in part.not_viewable]),
        view_undetermined=tuple([url for part in parts for url in part.view_undetermined]),
    )
    _take_viewable(take, merged)
    return merged


def _take_viewable(take: Callable[[Sequence[str]], object], viewable: ViewableImpression) -> None:
    take(viewable.viewable)
    take(viewable.not_viewable)
    take(viewable.view_undetermined)


def _with_unique_clicks(
    creative: Creative, clicks: Sequence[str], take: Callable[[Sequence[str]], object]
) -> Creative:
    """vast-client-js's rule: a Wrapper's companion click trackers go to every companion,
    once."""
    own = set(creative.click_tracking)
    added = list(dict.fromkeys([url for url in clicks if url not in own]))
    if not added:
        return creative
    take(added)
    return msgspec.structs.replace(creative, click_tracking=(*creative.click_tracking, *added))


class _Inherited:
    __slots__ = ("click_through", "click_tracking", "custom_clicks", "tracking")

    def __init__(self) -> None:
        self.tracking: list[Tracking] = []
        self.click_tracking: list[str] = []
        self.custom_clicks: list[str] = []
        self.click_through: str | None = None


def _inherited(wrappers: Sequence[Ad]) -> dict[CreativeKind, _Inherited]:
    """Per creative kind, what the Wrappers' linear and nonlinear creatives add, innermost
    Wrapper first (their companions are served as companions)."""
    inherited: dict[CreativeKind, _Inherited] = {}
    for wrapper in reversed(wrappers):
        for creative in wrapper.creatives:
            if creative.kind == "companion":
                continue
            extra = inherited.get(creative.kind)
            if extra is None:
                extra = inherited[creative.kind] = _Inherited()
            extra.tracking.extend(creative.tracking)
            extra.click_tracking.extend(creative.click_tracking)
            extra.custom_clicks.extend(creative.custom_clicks)
            extra.click_through = extra.click_through or creative.click_through
    return inherited


def _merge(creative: Creative, inherited: dict[CreativeKind, _Inherited]) -> Creative:
    extra = inherited.get(creative.kind)
    if extra is None:
        return creative
    return msgspec.structs.replace(
        creative,
        tracking=(*creative.tracking, *extra.tracking),
        click_tracking=(*creative.click_tracking, *extra.click_tracking),
        custom_clicks=(*creative.custom_clicks, *extra.custom_clicks),
        # VAST 2.0 players take a Wrapper's ClickThrough when the InLine has none.
        click_through=creative.click_through or extra.click_through,
    )
