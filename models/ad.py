"""The ad a served decision describes (`AdServed.ad`, `AdServed.chain`): plain Structs.

URLs here are templates: macros are left as the upstream wrote them, for whoever fires them
(`streams.macros.expand`). URLs with a scheme other than http or https are left out. The
VAST resolver (`streams.vast`) builds these and re-exports them.
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


class Hop(msgspec.Struct, frozen=True, omit_defaults=True):
    """One VAST document fetched along the way (redirects and retries included in it)."""

    url: str
    status: int
    """The last HTTP status seen; 0 when no response came (refused, unreachable, timed out)."""
    ms: float
    attempts: int = 1
    cached: bool = False


class ServedAd(msgspec.Struct, frozen=True, omit_defaults=True):
    """An InLine ad with the Wrappers above it merged in: what the `ad-served` event says of its
    ad, besides the document it carries once, apart.

    Its URLs are handed on, so their macros stay templates for whoever fires them (the player,
    or an edge: `streams.macros.expand`).
    """

    id: str | None
    sequence: int | None
    ad_system: str | None
    ad_title: str | None
    impressions: tuple[str, ...]
    errors: tuple[str, ...]
    creatives: tuple[Creative, ...]
    wrappers: int = 0
    viewable_impression: ViewableImpression | None = None
    unsafe_urls: int = 0
    """URLs of the chain dropped because their scheme is neither http nor https."""
