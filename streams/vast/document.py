"""A parsed VAST document: the parts resolution and the `ad-served` event need, as plain Structs.

URLs here are templates: macros are left as the upstream wrote them, for whoever fires them
(`streams.macros.expand`). URLs with a scheme other than http or https are left out
(`streams.vast.parse.is_safe_url`).
"""

from __future__ import annotations

from typing import Literal

import msgspec

CreativeKind = Literal["linear", "nonlinear", "companion"]


class MediaFile(msgspec.Struct, frozen=True, omit_defaults=True):
    url: str
    delivery: str | None = None
    type: str | None = None
    width: int | None = None
    height: int | None = None
    bitrate: int | None = None
    codec: str | None = None
    api_framework: str | None = None
    id: str | None = None


class Tracking(msgspec.Struct, frozen=True, omit_defaults=True):
    event: str
    url: str
    offset: str | None = None
    """For `progress` events: a time (`HH:MM:SS[.mmm]`) or a percentage."""


class Creative(msgspec.Struct, frozen=True, omit_defaults=True):
    kind: CreativeKind
    id: str | None = None
    ad_id: str | None = None
    sequence: int | None = None
    api_framework: str | None = None
    duration: str | None = None
    skip_offset: str | None = None
    media_files: tuple[MediaFile, ...] = ()
    tracking: tuple[Tracking, ...] = ()
    click_through: str | None = None
    click_tracking: tuple[str, ...] = ()
    custom_clicks: tuple[str, ...] = ()


class ViewableImpression(msgspec.Struct, frozen=True, omit_defaults=True):
    """The pixels a player fires once it knows whether the ad was viewable (IAB VAST 4.x)."""

    viewable: tuple[str, ...] = ()
    not_viewable: tuple[str, ...] = ()
    view_undetermined: tuple[str, ...] = ()


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
