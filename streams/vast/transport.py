"""HTTP for the resolver: one shared `httpx.AsyncClient` over httpx-aiohttp's transport.

aiohttp carries the bytes: httpx's own connection pool costs several times more CPU per request
and collapses under concurrency (DESIGN.md, "Performance facts"). Requests are httpx
`Request`s built by the client and handed straight to its transport: `AsyncClient.send`'s
auth, redirect and cookie-jar machinery costs about as much as the transport itself, and the
resolver needs none of it, since it follows redirects itself (checking every target) and
takes cookies from each request's context only.

Hostile upstreams meet: a body cap enforced while streaming (after decompression, so a gzip
bomb stops at the cap), a redirect cap, http and https only, and the opt-in SSRF guard
(`streams.vast.guard`).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Iterator, Mapping
from http.cookiejar import CookieJar, DefaultCookiePolicy
from types import TracebackType

import aiohttp
import httpx
import msgspec
import yarl
from httpx_aiohttp import AiohttpTransport

from streams.vast.errors import (
    BlockedAddress,
    DocumentError,
    FetchError,
    InvalidUrl,
    ResponseTooLarge,
    TooManyRedirects,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from streams.vast.guard import AddressPolicy, GuardedResolver, IPNetwork, RefusedAddress

DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_REDIRECTS = 5
USER_AGENT = "adstream-vast/0.1"

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_GZIP_OR_ZLIB = 32 + zlib.MAX_WBITS  # zlib detects the gzip or zlib header itself
_COMPRESSED = frozenset({"gzip", "x-gzip", "deflate"})
# RFC 6265: a cookie name is a token, a value cookie-octets. Anything else could smuggle a
# second cookie or header into the request, so it is not sent.
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_COOKIE_VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")


class Fetched(msgspec.Struct, frozen=True):
    url: str
    """The URL that answered, after redirects."""
    status: int
    body: bytes
    """Decoded (decompressed) and complete."""
    cache_control: str | None


class VastTransport:
    """A pooled HTTP client for VAST documents and tracking pixels; share one per process."""

    def __init__(
        self,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_redirects: int = DEFAULT_MAX_REDIRECTS,
        block_private_addresses: bool = False,
        allowed_networks: Iterable[str | IPNetwork] = (),
        max_connections: int = 100,
        keepalive_expiry: float = 30.0,
        user_agent: str = USER_AGENT,
    ) -> None:
        """`block_private_addresses` turns the SSRF guard on: only global addresses, plus
        `allowed_networks`, may be reached."""
        self.max_body_bytes = max_body_bytes
        self.max_redirects = max_redirects
        self._policy = AddressPolicy(allowed_networks) if block_private_addresses else None
        self._resolver: GuardedResolver | None = None
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._transport = AiohttpTransport(client=self._open_session)
        self.client = httpx.AsyncClient(
            transport=self._transport,
            headers={
                "User-Agent": user_agent,
                "Accept": "application/xml, text/xml, */*",
                "Accept-Encoding": "gzip, deflate",
            },
            # A jar whose policy accepts no cookie: nothing a response sets can reach another
            # user's request, even through `client` used directly.
            cookies=httpx.Cookies(CookieJar(DefaultCookiePolicy(allowed_domains=[]))),
            follow_redirects=False,
            timeout=None,  # callers bound every request with their own deadline
            trust_env=False,
        )

    def _open_session(self) -> aiohttp.ClientSession:
        # Called by the transport on its first request, inside the running event loop.
        if self._policy is not None:
            self._resolver = GuardedResolver(self._policy)
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            keepalive_timeout=self._keepalive_expiry,
            resolver=self._resolver,  # None: aiohttp's default
        )
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
        )

    async def get(
        self,
        url: str,
        *,
        cookies: Mapping[str, str] | None = None,
        max_body_bytes: int | None = None,
    ) -> Fetched:
        """GET `url`, following redirects, and read the whole body.

        Raises a `FetchError` (301) when no response can be had, `DocumentError` (100) when
        the body is too large or cannot be decoded. Any HTTP status is returned as is. Bound
        the call with `asyncio.timeout`: nothing here waits forever, but nothing here times out.
        """
        return await self._get(url, cookies, max_body_bytes or self.max_body_bytes)

    async def _get(self, url: str, cookies: Mapping[str, str] | None, cap: int) -> Fetched:
        cookie = _cookie_header(cookies) if cookies else None
        origin = None
        for _ in range(self.max_redirects + 1):
            target = self._check(url)
            if origin is not None and _origin(target) != origin:
                cookie = None  # the user's cookies stay with the origin they were sent to
            origin = _origin(target)
            request = self.client.build_request(
                "GET", target, headers=None if cookie is None else {"Cookie": cookie}
            )
            try:
                response = await self._transport.handle_async_request(request)
                try:
                    status = response.status_code
                    location = response.headers.get("location") if status in _REDIRECTS else None
                    if location is None:
                        return Fetched(
                            url=str(target),
                            status=status,
                            body=await _read(response, cap),
                            cache_control=response.headers.get("cache-control"),
                        )
                finally:
                    await response.aclose()
            except (httpx.HTTPError, aiohttp.ClientError, OSError) as exc:
                raise _fetch_error(exc, str(target)) from None
            try:
                url = str(target.join(location))
            except httpx.InvalidURL:
                raise InvalidUrl(f"unusable redirect Location {location!r}") from None
        raise TooManyRedirects(f"more than {self.max_redirects} redirects from {url}")

    def _check(self, url: str) -> httpx.URL:
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise InvalidUrl(f"invalid URL {url!r}: {exc}") from None
        if target.scheme not in ("http", "https") or not target.host:
            raise InvalidUrl(f"not an absolute http(s) URL: {url!r}")
        if self._policy is not None:
            # The host as aiohttp will parse it, so that two URL parsers cannot disagree on it.
            host = yarl.URL(str(target)).raw_host or ""
            try:
                self._policy.check_literal_host(host)
            except RefusedAddress as exc:
                raise BlockedAddress(f"{url}: {exc}") from None
        return target

    async def aclose(self) -> None:
        await self.client.aclose()
        if self._resolver is not None:  # a resolver passed in is not the connector's to close
            await self._resolver.close()

    async def __aenter__(self) -> VastTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def _cookie_header(cookies: Mapping[str, str]) -> str | None:
    pairs = [
        f"{name}={value}"
        for name, value in cookies.items()
        if _COOKIE_NAME.fullmatch(name) and _COOKIE_VALUE.fullmatch(value)
    ]
    return "; ".join(pairs) or None


async def _read(response: httpx.Response, cap: int) -> bytes:
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("identity", ""):
        length = response.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cap:
            raise ResponseTooLarge(f"Content-Length {length} exceeds the {cap}-byte cap")
        body = _Body(cap)
    elif encoding in _COMPRESSED:
        body = _InflatedBody(cap)
    else:
        raise DocumentError(f"unsupported Content-Encoding {encoding!r}")
    async for chunk in response.aiter_raw():
        body.feed(chunk)
    return body.finish()


class _Body:
    """Collects a body, refusing it as soon as it passes `cap` bytes."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._size = 0
        self._parts: list[bytes] = []

    def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._cap:
            raise ResponseTooLarge(f"the body exceeds the {self._cap}-byte cap")
        self._parts.append(chunk)

    def finish(self) -> bytes:
        return b"".join(self._parts)


class _InflatedBody(_Body):
    """Decompresses gzip/zlib while collecting, never inflating past the cap.

    httpx's decoders inflate a whole chunk at once, so a 16 KiB chunk of a gzip bomb would
    become ~16 MiB in memory before any check; here zlib stops one byte past the cap.
    """

    def __init__(self, cap: int) -> None:
        super().__init__(cap)
        self._inflater = zlib.decompressobj(_GZIP_OR_ZLIB)

    def feed(self, chunk: bytes) -> None:
        try:
            # Output that reaches the limit is over the cap, and feed() raises on it: no
            # input is ever left unconsumed otherwise.
            super().feed(self._inflater.decompress(chunk, self._cap - self._size + 1))
        except zlib.error as exc:
            raise DocumentError(f"corrupt compressed body: {exc}") from None

    def finish(self) -> bytes:
        if not self._inflater.eof:
            raise DocumentError("truncated compressed body")
        return super().finish()


def _fetch_error(exc: BaseException, url: str) -> FetchError:
    """Our error for a failure below HTTP, told apart by its root causes.

    httpx-aiohttp maps aiohttp's errors coarsely (a refused connection becomes
    `ConnectTimeout`), so the causes it chains are what is looked at.
    """
    for cause in _causes(exc):
        if isinstance(cause, RefusedAddress):
            return BlockedAddress(f"{url}: {cause}")
        if isinstance(cause, TimeoutError):
            return UpstreamTimeout(f"{url}: timed out")
        if isinstance(cause, (httpx.UnsupportedProtocol, aiohttp.InvalidURL)):
            return InvalidUrl(f"{url}: {cause}")
    return UpstreamUnavailable(f"{url}: {exc}")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
