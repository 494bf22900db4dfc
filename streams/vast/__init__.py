"""VAST resolution: fetch a tag, follow its wrapper chain, and return the ads to serve.

    from streams.vast import VastUpstream

    async with VastUpstream("https://ads.example.com/vast?cb=[CACHEBUSTING]") as upstream:
        result = await upstream.fetch(params={"placement_id": "preroll"}, context=context)
    result.status, result.error_code, result.ads, result.chain

Modules: `parse` (bytes to `Document`), `chain` (the wrapper-chain rules, pure), `deadline`
(the chain's deadline for CPU work), `transport`
(HTTP), `guard` (SSRF), `retry`, `breaker` (slow endpoints), `cache` (Redis), `pixels` (error
reporting), `upstream`.
"""

from models.ad import Creative, Hop, MediaFile, ServedAd, Tracking
from streams.vast.breaker import CircuitBreaker
from streams.vast.cache import ResponseCache
from streams.vast.document import Ad, Document, Wrapper
from streams.vast.errors import (
    BlockedAddress,
    CircuitOpen,
    DeadlinePassed,
    DocumentError,
    FetchError,
    FetchLimitReached,
    ForbiddenDoctype,
    InvalidUrl,
    NoAdError,
    ResponseTooLarge,
    SchemaError,
    TooManyAds,
    TooManyRedirects,
    UnsupportedVersion,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnavailable,
    VastError,
    WrapperError,
    WrapperLimitReached,
    WrapperLoop,
)
from streams.vast.parse import parse_vast
from streams.vast.result import ErrorReport, ResolvedAd, Status, VastResult
from streams.vast.retry import RetryPolicy
from streams.vast.transport import VastTransport
from streams.vast.upstream import RetryMiddleware, VastUpstream

__all__ = [
    "Ad",
    "BlockedAddress",
    "CircuitBreaker",
    "CircuitOpen",
    "Creative",
    "DeadlinePassed",
    "Document",
    "DocumentError",
    "ErrorReport",
    "FetchError",
    "FetchLimitReached",
    "ForbiddenDoctype",
    "Hop",
    "InvalidUrl",
    "MediaFile",
    "NoAdError",
    "ResolvedAd",
    "ResponseCache",
    "ResponseTooLarge",
    "RetryMiddleware",
    "RetryPolicy",
    "SchemaError",
    "ServedAd",
    "Status",
    "TooManyAds",
    "TooManyRedirects",
    "Tracking",
    "UnsupportedVersion",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "VastError",
    "VastResult",
    "VastTransport",
    "VastUpstream",
    "Wrapper",
    "WrapperError",
    "WrapperLimitReached",
    "WrapperLoop",
    "parse_vast",
]
