"""A parsed VAST document: the parts resolution needs, as plain Structs. The parts the
`ad-served` event carries (`Creative`, `MediaFile`, `Tracking`, `ViewableImpression`) are
`models.ad`'s, re-exported here.

URLs with a scheme other than http or https are left out (`streams.vast.parse.is_safe_url`).
"""

from __future__ import annotations

import msgspec

from models.ad import Creative, ViewableImpression


class Wrapper(msgspec.Struct, frozen=True):
    """What makes an Ad a Wrapper: where its ad comes from, and the rules for that response."""

    ad_tag_uri: str
    follow_additional_wrappers: bool = True
    allow_multiple_ads: bool = False
    fallback_on_no_ad: bool | None = None
    """None when the attribute is absent: the player (we) may choose."""


class Ad(msgspec.Struct, frozen=True, omit_defaults=True):
    id: str | None = None
    sequence: int | None = None
    """Position in an ad pod; None for a stand-alone ad."""
    ad_system: str | None = None
    ad_title: str | None = None
    impressions: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    creatives: tuple[Creative, ...] = ()
    viewable_impression: ViewableImpression | None = None
    wrapper: Wrapper | None = None
    """Set for a `<Wrapper>` ad, None for an `<InLine>` one."""


class Document(msgspec.Struct, frozen=True):
    version: str
    ads: tuple[Ad, ...]
    errors: tuple[str, ...]
    """Root-level `<Error>` URLs: fired when the response has no ad."""
    encoding: str
    """The character encoding the XML declaration names (UTF-8 when it names none)."""
    namespace: str = ""
    """IAB's VAST namespace when the document is in it, else empty."""
