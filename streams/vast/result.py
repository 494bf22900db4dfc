"""What `VastUpstream.fetch` returns: plain Structs, ready for msgspec's JSON encoder."""

from __future__ import annotations

from typing import Literal

import msgspec

from models.ad import Hop, ServedAd

Status = Literal["inline", "no_ad", "error"]


class ErrorReport(msgspec.Struct, frozen=True):
    """One failure and the `<Error>` pixels it was reported to, macros substituted."""

    code: int
    message: str
    urls: tuple[str, ...]


class ResolvedAd(ServedAd, frozen=True, omit_defaults=True, kw_only=True):
    """A `ServedAd` with the document it is served in."""

    vast: str
    """The unwrapped document of the request's selection (`streams.vast.unwrap`): the one ad,
    or the whole pod, each with its chain merged in. One string shared by every ad of the
    selection, so a pod costs its document once."""

    def served(self) -> ServedAd:
        """This ad without its document, for an event that carries the document itself."""
        return ServedAd(**{name: getattr(self, name) for name in ServedAd.__struct_fields__})


class VastResult(msgspec.Struct, frozen=True):
    status: Status
    error_code: int | None
    """The IAB code of the failure; None when `status` is inline."""
    ads: tuple[ResolvedAd, ...]
    """The selected ad, or an ad pod in sequence order."""
    chain: tuple[Hop, ...]
    errors: tuple[ErrorReport, ...] = ()
    """Every failure met on the way, also those a fallback ad made up for."""

    @property
    def impressions(self) -> tuple[str, ...]:
        return tuple(url for ad in self.ads for url in ad.impressions)

    @property
    def vast(self) -> str | None:
        """The unwrapped document of the selection."""
        return self.ads[0].vast if self.ads else None
