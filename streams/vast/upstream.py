"""`VastUpstream`: resolve a VAST tag, following its wrapper chain, to the ads to serve.

    upstream = VastUpstream("https://ads.example.com/vast?cb=[CACHEBUSTING]")
    result = await upstream.fetch(params={"placement_id": "preroll"}, context=context)

`fetch` never raises for anything an upstream does: every failure becomes a `VastResult` with
status `no_ad` or `error` and its IAB code, and is reported to the chain's `<Error>` pixels in
the background. Parsing and merging are pure (`streams.vast.parse`, `streams.vast.chain`); this
module only walks the chain: fetching, deadlines, retries, caching and pixels.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import NamedTuple
from urllib.parse import quote, unquote_plus, urlencode, urljoin

import msgspec
from lxml.etree import _Element

from models.ad import Hop
from models.context import SessionContext
from streams.macros import Macros
from streams.vast import chain, unwrap
from streams.vast.breaker import CircuitBreaker, endpoint_of
from streams.vast.cache import ResponseCache, cache_ttl
from streams.vast.deadline import Deadline
from streams.vast.document import Ad
from streams.vast.errors import (
    CircuitOpen,
    DeadlinePassed,
    FetchLimitReached,
    NoAdError,
    ResponseTooLarge,
    UpstreamStatusError,
    UpstreamTimeout,
    VastError,
    WrapperLimitReached,
    WrapperLoop,
)
from streams.vast.memo import Digest, Path, ResolverMemo, selection_bytes
from streams.vast.parse import DEFAULT_MAX_ADS, Parsed
from streams.vast.pixels import ErrorPixels
from streams.vast.result import ErrorReport, ResolvedAd, Status, VastResult
from streams.vast.retry import NO_RETRIES, RetryPolicy
from streams.vast.transport import Fetched, VastTransport

log = logging.getLogger(__name__)

DEFAULT_MAX_DEPTH = 5
"""Wrappers followed before an InLine must come: IAB's minimum for players."""
DEFAULT_MAX_FETCHES = 10
"""Upstream GETs one request may cause, across its chain and every fallback ad, retries
included: a document of thousands of fallback Wrappers costs no more than this."""


class VastUpstream:
    def __init__(
        self,
        url: str | None = None,
        *,
        transport: VastTransport | None = None,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_fetches: int = DEFAULT_MAX_FETCHES,
        max_ads: int = DEFAULT_MAX_ADS,
        max_ad_chars: int = chain.DEFAULT_MAX_AD_CHARS,
        hop_timeout: float = 2.0,
        timeout: float = 5.0,
        retry: RetryPolicy = NO_RETRIES,
        breaker: CircuitBreaker | None = None,
        cache: ResponseCache | None = None,
        cache_ttl: float = 60.0,
        allow_multiple_ads: bool = True,
        unix_timestamp: bool = False,
        fire_error_pixels: bool = True,
        memo: ResolverMemo | None = None,
    ) -> None:
        """
        `url`: the tag (macros allowed) that `fetch` requests when given only params.
        `transport`: share one across upstreams; by default the upstream opens and owns one.
        `max_fetches`: upstream GETs per `fetch` call (302 past it); `max_ads`: ads one
        document may hold (101 past it); `max_ad_chars`: what one resolved ad may hold, its
        document and URLs with macros substituted (100 past it).
        `hop_timeout` bounds each document fetch, `timeout` the whole chain (retries, parsing
        and merging included).
        `breaker`: fail the URLs of an endpoint that keeps timing out at once for a while
        (share one across upstreams; none by default).
        `cache`/`cache_ttl`: store this upstream's responses for up to `cache_ttl` seconds,
        less if a response's Cache-Control says so, never if it forbids it.
        `allow_multiple_ads`: whether the tag's response may be an ad pod.
        `unix_timestamp`: `[TIMESTAMP]` as Unix milliseconds instead of ISO 8601.
        `memo`: documents parsed and selections unwrapped, reused by later requests that get
        the same documents back; share one across upstreams (by default each keeps its own).
        """
        if max_depth < 0 or min(max_fetches, max_ads, max_ad_chars) < 1:
            raise ValueError("max_depth must be >= 0 and every other limit >= 1")
        if hop_timeout <= 0 or timeout <= 0 or cache_ttl <= 0:
            raise ValueError("every duration must be > 0")
        self.url = url
        self._owns_transport = transport is None
        self.transport = transport or VastTransport()
        self.max_depth = max_depth
        self.max_fetches = max_fetches
        self.max_ads = max_ads
        self.max_ad_chars = max_ad_chars
        self.hop_timeout = hop_timeout
        self.timeout = timeout
        self.retry = retry
        self.breaker = breaker
        self.cache = cache
        self.cache_ttl = cache_ttl
        self.allow_multiple_ads = allow_multiple_ads
        self.unix_timestamp = unix_timestamp
        self.error_pixels = ErrorPixels(self.transport) if fire_error_pixels else None
        self.memo = memo or ResolverMemo()

    async def fetch(
        self,
        url_or_params: str | Mapping[str, str] | None = None,
        /,
        *,
        context: SessionContext,
        params: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
    ) -> VastResult:
        """Resolve a tag for one request.

        `url_or_params`: the tag URL (macros allowed), or params for the upstream's own `url`.
        `params` fill macros and are added to the tag's query string, except a key the query
        has already (in any case or encoding): the tag's own values are never overridden.
        `retry` overrides the upstream's policy for this call.
        """
        if isinstance(url_or_params, str):
            template = url_or_params
        else:
            if self.url is None:
                raise TypeError("this VastUpstream has no url: pass one to fetch()")
            template = self.url
            if url_or_params is not None:
                params = {**url_or_params, **(params or {})}
        resolution = _Resolution(self, context, params, retry or self.retry)
        return await resolution.run(template)

    async def aclose(self) -> None:
        """Let pending error pixels finish briefly, then close what this upstream opened."""
        if self.error_pixels is not None:
            await self.error_pixels.aclose()
        if self._owns_transport:
            await self.transport.aclose()

    async def __aenter__(self) -> VastUpstream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


class _Loaded:
    """A fetched document, with the URL its relative VASTAdTagURIs resolve against."""

    __slots__ = ("digest", "document", "elements", "url")

    def __init__(self, url: str, digest: Digest, parsed: Parsed) -> None:
        self.url = url
        self.digest = digest
        self.document = parsed.document
        self.elements = parsed.elements

    def locate(self, ad: Ad) -> tuple[int, _Element]:
        """Where `ad` is in the document, and the `<Ad>` element it was read from."""
        for index, (candidate, element) in enumerate(
            zip(self.document.ads, self.elements, strict=True)
        ):
            if candidate is ad:
                return index, element
        raise ValueError("the ad is not of this document")


_Above = tuple[tuple[_Element, str], ...]
"""The `<Ad>` elements of the Wrappers above an ad, outermost first, each with its document's
namespace."""


class _Leaf(NamedTuple):
    """An InLine ad the chain selected, with what unwrapping it takes."""

    resolved: ResolvedAd
    """Its typed view, `vast` still empty."""
    element: _Element
    namespace: str
    version: str
    above: _Above
    path: Path


class _Resolution:
    """The state of one `fetch`: its macros, deadline, hops and reported failures."""

    def __init__(
        self,
        upstream: VastUpstream,
        context: SessionContext,
        params: Mapping[str, str] | None,
        retry: RetryPolicy,
    ) -> None:
        self.upstream = upstream
        self.macros = Macros(context, params, unix_timestamp=upstream.unix_timestamp)
        self.params = params
        self.cookies = context.cookies
        self.retry = retry
        self.loop = asyncio.get_running_loop()
        # On the event loop's clock, for asyncio.timeout_at.
        self.deadline = self.loop.time() + upstream.timeout
        # The same, for parsing and merging: the loop's clock may not move while they run.
        self.cpu_deadline = Deadline.after(upstream.timeout)
        self.fetches = 0
        self.hops: list[Hop] = []
        self.reports: list[ErrorReport] = []

    async def run(self, template: str) -> VastResult:
        url = _with_query(self.macros.expand(template), self.params)
        cache = self.upstream.cache
        key = cache.key(template, self.params) if cache else None
        rules = chain.Rules(allow_multiple_ads=self.upstream.allow_multiple_ads)
        try:
            served = await self._follow(url, key, (), (), (), frozenset(), rules)
            ads = self._unwrapped(served)
        except VastError as exc:
            if not exc.reported:
                self._report(exc, ())
            status: Status = "no_ad" if isinstance(exc, NoAdError) else "error"
            return VastResult(status, exc.code, (), tuple(self.hops), tuple(self.reports))
        return VastResult("inline", None, ads, tuple(self.hops), tuple(self.reports))

    def _unwrapped(self, served: Sequence[_Leaf]) -> tuple[ResolvedAd, ...]:
        """The ads with the one document they are served in, built once per selection of the
        same documents (`streams.vast.memo`). Raises ResponseTooLarge (100), reported to the
        ads' error URLs, when an ad and that document pass `max_ad_chars`."""
        limit = self.upstream.max_ad_chars
        memo = self.upstream.memo.unwrapped
        key = (limit, tuple([(leaf.path, leaf.resolved.sequence) for leaf in served]))
        ads = memo.get(key)
        if ads is not None:
            return ads
        unwrapped = [
            unwrap.unwrap_ad(leaf.element, leaf.namespace, leaf.version, leaf.above)
            for leaf in served
        ]
        vast = unwrap.document(unwrapped, [leaf.resolved.sequence for leaf in served])
        ads = tuple(
            [
                msgspec.structs.replace(leaf.resolved, vast=vast, unsafe_urls=ad.unsafe_urls)
                for leaf, ad in zip(served, unwrapped, strict=True)
            ]
        )
        chars = [chain.chars(ad) for ad in ads]
        if any(len(vast) + count > limit for count in chars):
            exc = ResponseTooLarge(f"the unwrapped document and an ad's URLs pass {limit} chars")
            self._report(exc, list(dict.fromkeys(url for ad in ads for url in ad.errors)))
            raise exc
        memo.put(key, ads, selection_bytes(ads, sum(chars)))
        return ads

    async def _follow(
        self,
        url: str,
        key: str | None,
        wrappers: tuple[Ad, ...],
        above: _Above,
        path: Path,
        visited: frozenset[str],
        rules: chain.Rules,
    ) -> list[_Leaf]:
        """Fetch the document at `url` and resolve the ads `rules` select from it."""
        if url in visited:
            raise WrapperLoop(f"{url} is already in this chain")
        loaded = await self._load(url, key)
        document = loaded.document
        try:
            targets, fallbacks = chain.plan(document, rules)
        except VastError as exc:
            self._report(exc, chain.error_urls(wrappers, document.errors))
            raise
        visited = visited | {url, loaded.url}
        if len(targets) == 1:
            outcomes = [
                await self._slot(targets[0], fallbacks, loaded, wrappers, above, path, visited)
            ]
        else:
            # The pod's ads resolve concurrently; siblings may share a URL, since each one's
            # cycle check sees only its own chain.
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(
                        self._slot(ad, fallbacks, loaded, wrappers, above, path, visited)
                    )
                    for ad in targets
                ]
            outcomes = [task.result() for task in tasks]
        ads = [ad for outcome in outcomes if isinstance(outcome, list) for ad in outcome]
        if ads:
            return ads
        raise next(outcome for outcome in outcomes if isinstance(outcome, VastError))

    async def _slot(
        self,
        ad: Ad,
        fallbacks: deque[Ad],
        loaded: _Loaded,
        wrappers: tuple[Ad, ...],
        above: _Above,
        path: Path,
        visited: frozenset[str],
    ) -> list[_Leaf] | VastError:
        """Resolve `ad`, or the stand-alone ads that may replace it, in turn. Returns the
        first failure when none resolves."""
        first_failure: VastError | None = None
        while True:
            try:
                return await self._resolve_ad(ad, loaded, wrappers, above, path, visited)
            except VastError as exc:
                if not exc.reported:
                    self._report(exc, chain.error_urls((*wrappers, ad)))
                first_failure = first_failure or exc
                if exc.ends_resolution:
                    return first_failure
            if not (fallbacks and chain.may_fall_back(ad)):
                return first_failure
            ad = fallbacks.popleft()

    async def _resolve_ad(
        self,
        ad: Ad,
        loaded: _Loaded,
        wrappers: tuple[Ad, ...],
        above: _Above,
        path: Path,
        visited: frozenset[str],
    ) -> list[_Leaf]:
        index, element = loaded.locate(ad)
        document = loaded.document
        path = (*path, (loaded.digest, index))
        if ad.wrapper is None:
            if not ad.creatives:
                raise NoAdError("an InLine ad without creatives")
            resolved = chain.resolve_ad(
                ad, wrappers, max_chars=self.upstream.max_ad_chars, deadline=self.cpu_deadline
            )
            return [_Leaf(resolved, element, document.namespace, document.version, above, path)]
        if len(wrappers) >= self.upstream.max_depth:
            raise WrapperLimitReached(f"more than {self.upstream.max_depth} Wrappers in a chain")
        uri = ad.wrapper.ad_tag_uri
        url = urljoin(loaded.url, self.macros.expand(uri))
        cache = self.upstream.cache
        key = cache.key(urljoin(loaded.url, uri)) if cache else None
        served = await self._follow(
            url,
            key,
            (*wrappers, ad),
            (*above, (element, document.namespace)),
            path,
            visited,
            chain.Rules.of(ad.wrapper),
        )
        if len(served) == 1 and ad.sequence is not None:
            # A Wrapper's place in a pod passes to the one ad it resolved to.
            (leaf,) = served
            resolved = msgspec.structs.replace(leaf.resolved, sequence=ad.sequence)
            return [leaf._replace(resolved=resolved)]
        return served

    async def _load(self, url: str, key: str | None) -> _Loaded:
        cache = self.upstream.cache
        if cache is not None and key is not None:
            started = time.perf_counter()
            body = await cache.get(key)
            if body is not None:
                self.hops.append(Hop(url, 200, _ms_since(started), cached=True))
                return _Loaded(url, *self._parse(body))
        fetched = await self._get(url)
        if fetched.status == 204 or not fetched.body or fetched.body.isspace():  # strip() copies
            raise NoAdError(f"empty response from {url}")
        digest, parsed = self._parse(fetched.body)
        if cache is not None and key is not None and parsed.document.ads:
            ttl = cache_ttl(fetched.cache_control, self.upstream.cache_ttl)
            if ttl is not None:
                await cache.set(key, fetched.body, ttl)
        return _Loaded(fetched.url, digest, parsed)

    def _parse(self, body: bytes) -> tuple[Digest, Parsed]:
        return self.upstream.memo.parse(
            body, max_ads=self.upstream.max_ads, deadline=self.cpu_deadline
        )

    async def _get(self, url: str) -> Fetched:
        """One hop: GET with retries, within the hop timeout and the chain deadline."""
        # Before the hop is recorded: a request's chain lists only what was asked for.
        self._check_fetches(url)
        started = time.perf_counter()
        attempts = status = 0
        breaker = self.upstream.breaker
        try:
            while True:
                now = self.loop.time()
                if now >= self.deadline:
                    raise DeadlinePassed(f"the chain deadline passed before {url}")
                if breaker is not None and not breaker.allows(url):
                    raise CircuitOpen(f"{url}: it keeps timing out; not asked for now")
                self._check_fetches(url)  # again for a retry
                self.fetches += 1
                attempts += 1
                try:
                    fetched = await self._attempt(
                        url, min(now + self.upstream.hop_timeout, self.deadline)
                    )
                    status = fetched.status
                    return fetched
                except VastError as exc:
                    if isinstance(exc, UpstreamStatusError):
                        status = exc.status
                    if not exc.retryable or attempts > self.retry.max_retries:
                        raise
                    delay = self.retry.delay(attempts - 1)
                    if self.loop.time() + delay >= self.deadline:
                        raise
                await asyncio.sleep(delay)
        finally:
            self.hops.append(Hop(url, status, _ms_since(started), attempts))

    def _check_fetches(self, url: str) -> None:
        if self.fetches >= self.upstream.max_fetches:
            raise FetchLimitReached(
                f"{url} would be fetch {self.fetches + 1} of this request; the cap is "
                f"{self.upstream.max_fetches}"
            )

    async def _attempt(self, url: str, deadline: float) -> Fetched:
        breaker = self.upstream.breaker
        try:
            async with asyncio.timeout_at(deadline):
                fetched = await self.upstream.transport.get(url, cookies=self.cookies)
        except TimeoutError:
            if breaker is not None and breaker.timed_out(url, lag=self.loop.time() - deadline):
                log.warning(
                    "upstream %s keeps timing out: its URLs fail at once (301) for %g s, "
                    "then one request probes it",
                    endpoint_of(url), breaker.cooldown,
                )  # fmt: skip
            raise UpstreamTimeout(f"no response from {url} in time") from None
        if breaker is not None:
            breaker.answered(url)
        if not 200 <= fetched.status < 300:
            raise UpstreamStatusError(fetched.status, url)
        return fetched

    def _report(self, exc: VastError, urls: Sequence[str]) -> None:
        exc.reported = True
        pixels = tuple(self.macros.expand(url, error_code=exc.code) for url in urls)
        self.reports.append(ErrorReport(exc.code, str(exc), pixels))
        if pixels and self.upstream.error_pixels is not None:
            self.upstream.error_pixels.fire(pixels)


def _with_query(url: str, params: Mapping[str, str] | None) -> str:
    """`url` with `params` added to its query, except those whose key is there already.

    An upstream given a key twice picks one value by its own rule, so the campaign's tag keeps
    its values: a key is compared decoded and ignoring case, as some servers read keys.
    """
    if not params:
        return url
    base, hash_mark, fragment = url.partition("#")
    _, _, query = base.partition("?")
    taken = {unquote_plus(pair.partition("=")[0]).casefold() for pair in query.split("&")}
    added = []
    for key, value in params.items():
        if key.casefold() not in taken:
            taken.add(key.casefold())
            added.append((key, value))
    if not added:
        return url
    separator = "" if base.endswith(("?", "&")) else "&" if "?" in base else "?"
    return f"{base}{separator}{urlencode(added, quote_via=quote)}{hash_mark}{fragment}"


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


class RetryMiddleware:
    """Wraps an upstream so that its hops are retried under `policy`."""

    def __init__(
        self,
        upstream: VastUpstream,
        max_retries: int = 3,
        *,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.upstream = upstream
        self.policy = policy or RetryPolicy(max_retries=max_retries)

    async def fetch(
        self,
        url_or_params: str | Mapping[str, str] | None = None,
        /,
        *,
        context: SessionContext,
        params: Mapping[str, str] | None = None,
    ) -> VastResult:
        return await self.upstream.fetch(
            url_or_params, context=context, params=params, retry=self.policy
        )
