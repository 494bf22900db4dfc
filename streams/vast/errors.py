"""Every way a VAST resolution can fail, each carrying the IAB error code it reports.

The codes are VAST's own (IAB VAST 4.x, section 2.3.6), so an error is reported to upstreams'
`<Error>` pixels and to the `ad-denied` topic with the same number. Catch `VastError` for all
of them; `retryable` says whether a fresh attempt at the same URL could succeed.
"""

from __future__ import annotations

from typing import ClassVar


class VastError(Exception):
    """Base class: a resolution failure with an IAB error code (900, undefined, by default)."""

    code: ClassVar[int] = 900
    retryable: bool = False
    ends_resolution: ClassVar[bool] = False
    """Set for failures of the request's own budget (deadline, fetches): once one happens,
    no fallback ad is tried, since each would fail the same way."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        # Set once the failure's <Error> pixels have been fired, so that a failure seen again
        # higher up the chain is not reported twice.
        self.reported = False


class DocumentError(VastError):
    """100: the response is not well-formed XML, or is a document we refuse to read."""

    code = 100


class ForbiddenDoctype(DocumentError):
    """100: the document declares a DTD. Refused before parsing, so XXE and entity-expansion
    documents never reach the XML parser."""


class ResponseTooLarge(DocumentError):
    """100: the body, after decompression, exceeds the size cap; or a resolved ad, its document
    and URLs with macros substituted, exceeds what one `ad-served` event may carry."""


class SchemaError(VastError):
    """101: well-formed XML that is not a valid VAST document."""

    code = 101


class TooManyAds(SchemaError):
    """101: a document holds more ads (pod and stand-alone ads together) than the cap."""


class UnsupportedVersion(VastError):
    """102: a VAST version we do not resolve (VAST 1.0, or an unknown major version)."""

    code = 102


class WrapperError(VastError):
    """300: a Wrapper's rules (`followAdditionalWrappers`, `allowMultipleAds`) exclude every
    ad of the response it points to."""

    code = 300


class FetchError(VastError):
    """301: a VAST URI could not be fetched: unreachable, timed out, refused or not a 2xx."""

    code = 301


class UpstreamUnavailable(FetchError):
    """301: the connection failed or broke."""

    retryable = True


class UpstreamTimeout(FetchError):
    """301: the hop's timeout or the chain's deadline passed."""

    retryable = True


class DeadlinePassed(UpstreamTimeout):
    """301: the chain's deadline passed, while waiting or while parsing and merging: nothing
    more is fetched or resolved for this request."""

    retryable = False
    ends_resolution = True


class CircuitOpen(FetchError):
    """301: the endpoint timed out again and again and is not asked for now
    (`streams.vast.breaker`); another attempt right away would fail the same way."""


class UpstreamStatusError(FetchError):
    """301: the final HTTP status was not 2xx; 5xx responses are worth another try."""

    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"HTTP {status} from {url}")
        self.status = status
        self.retryable = status >= 500


class InvalidUrl(FetchError):
    """301: not an absolute http(s) URL."""


class BlockedAddress(FetchError):
    """301: the host resolves only to addresses the SSRF guard refuses (not global)."""


class TooManyRedirects(FetchError):
    """301: more HTTP redirects than the cap allows (a redirect loop ends here too)."""


class WrapperLimitReached(VastError):
    """302: more Wrappers than the depth limit allows before an InLine."""

    code = 302


class WrapperLoop(WrapperLimitReached):
    """302: a Wrapper points back to a URL already fetched in its own chain; following it would
    only ever end at the depth limit."""


class FetchLimitReached(WrapperLimitReached):
    """302: the request has used up its upstream fetches (across its chain and every fallback
    ad) before an InLine came."""

    ends_resolution = True


class NoAdError(VastError):
    """303: no ad: an empty response, or an InLine ad without creatives."""

    code = 303
