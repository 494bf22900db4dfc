"""HTTP for the resolver: one shared aiohttp session, also offered as an `httpx.AsyncClient`.

aiohttp carries the bytes: httpx's own connection pool costs several times more CPU per request
and collapses under concurrency (docs/architecture.md, "Performance facts"). The resolver's
own GETs go straight to the shared `aiohttp.ClientSession`: building httpx `Request` and
`Response` objects and converting between them and aiohttp's (httpx-aiohttp) cost about as
much CPU as the HTTP exchange itself, and the resolver needs none of httpx's machinery,
since it follows redirects itself (checking every target) and takes cookies from each
request's context only.
`VastTransport.client` is an `httpx.AsyncClient` over httpx-aiohttp's transport on the very same
session (connector, connection limits, SSRF-guarded resolver, no cookie jar), for callers who
want the httpx API; every URL it requests passes the same check as the resolver's own.

Hostile upstreams meet: a body cap enforced while streaming (on the bytes received and on
what they decompress to, so a gzip bomb stops at the cap), a redirect cap, http and https
only, and the opt-in SSRF guard (`streams.vast.guard`).
"""

from __future__ import annotations

import ipaddress
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
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
_IPV4_STYLE = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")
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
        self._headers = {
            "User-Agent": user_agent,
            "Accept": "application/xml, text/xml, */*",
            "Accept-Encoding": "gzip, deflate",
        }
        self._session: aiohttp.ClientSession | None = None
        # The httpx API on this transport's session, for callers who want it; the resolver's
        # own GETs do not go through it (see the module docstring).
        self.client = httpx.AsyncClient(
            transport=_CheckedTransport(AiohttpTransport(client=self._open_session), self._check),
            headers=self._headers,
            # A jar whose policy accepts no cookie: nothing a response sets can reach another
            # user's request, even through `client` used directly.
            cookies=httpx.Cookies(CookieJar(DefaultCookiePolicy(allowed_domains=[]))),
            follow_redirects=False,
            timeout=None,  # callers bound every request with their own deadline
            trust_env=False,
        )

    def _open_session(self) -> aiohttp.ClientSession:
        # Called on the first request (ours or `client`'s), inside the running event loop.
        if self._session is not None:
            return self._session
        if self._policy is not None:
            self._resolver = GuardedResolver(self._policy)
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            keepalive_timeout=self._keepalive_expiry,
            resolver=self._resolver,  # None: aiohttp's default
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
            timeout=aiohttp.ClientTimeout(),  # none: callers bound every request
        )
        return self._session

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
        session = self._session or self._open_session()
        target = self._check(url)
        origin = _origin(target)
        for _ in range(self.max_redirects + 1):
            try:
                async with session.get(
                    target,
                    headers=None if cookie is None else {"Cookie": cookie},
                    allow_redirects=False,
                ) as response:
                    status = response.status
                    headers = response.headers
                    location = headers.get("Location") if status in _REDIRECTS else None
                    if location is None:
                        try:
                            body = await _read(response, headers, cap)
                        except BaseException:
                            response.close()  # never back to the pool with a body unread
                            raise
                        return Fetched(
                            url=str(target),
                            status=status,
                            body=body,
                            cache_control=headers.get("Cache-Control"),
                        )
            except (aiohttp.ClientError, OSError) as exc:
                raise _fetch_error(exc, str(target)) from None
            try:
                joined = target.join(yarl.URL(location))
            except (ValueError, TypeError):
                raise InvalidUrl(f"unusable redirect Location {location!r}") from None
            target = self._check(joined)
            if _origin(target) != origin:
                cookie = None  # the user's cookies stay with the origin they were sent to
            origin = _origin(target)
        raise TooManyRedirects(f"more than {self.max_redirects} redirects from {url}")

    def _check(self, url: str | yarl.URL) -> yarl.URL:
        """`url` parsed as aiohttp will parse it (so that two URL parsers cannot disagree on
        its host), if it is an absolute http(s) URL the policy lets us reach."""
        try:
            target = url if isinstance(url, yarl.URL) else yarl.URL(url)
            host = target.raw_host
        except (ValueError, TypeError) as exc:
            raise InvalidUrl(f"invalid URL {str(url)!r}: {exc}") from None
        if target.scheme not in ("http", "https") or not host:
            raise InvalidUrl(f"not an absolute http(s) URL: {str(url)!r}")
        if _IPV4_STYLE.fullmatch(host):
            # Like httpx (and WHATWG), a dotted quad must be a canonical address: the OS would
            # read `0177.0.0.1` as 127.0.0.1.
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise InvalidUrl(f"invalid IPv4 address {host!r} in {str(url)!r}") from None
        if self._policy is not None:
            try:
                self._policy.check_literal_host(host)
            except RefusedAddress as exc:
                raise BlockedAddress(f"{url}: {exc}") from None
        return target

    async def aclose(self) -> None:
        await self.client.aclose()  # closes the session, through httpx-aiohttp's transport
        if self._session is not None:
            await self._session.close()  # idempotent
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


class _CheckedTransport(httpx.AsyncBaseTransport):
    """httpx's way into the session, checked as the resolver's own GETs are: aiohttp connects
    to an IP literal without asking the guarded resolver."""

    def __init__(
        self, transport: httpx.AsyncBaseTransport, check: Callable[[str], yarl.URL]
    ) -> None:
        self._transport = transport
        self._check = check

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            self._check(str(request.url))  # the very string httpx-aiohttp hands to aiohttp
        except BlockedAddress as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except InvalidUrl as exc:  # as httpx-aiohttp reports aiohttp's refusal of a URL
            raise httpx.UnsupportedProtocol(str(exc), request=request) from exc
        return await self._transport.handle_async_request(request)

    async def aclose(self) -> None:
        await self._transport.aclose()


def _origin(url: yarl.URL) -> tuple[str, str | None, int | None]:
    return url.scheme, url.raw_host, url.port


def _cookie_header(cookies: Mapping[str, str]) -> str | None:
    pairs = [
        f"{name}={value}"
        for name, value in cookies.items()
        if _COOKIE_NAME.fullmatch(name) and _COOKIE_VALUE.fullmatch(value)
    ]
    return "; ".join(pairs) or None


async def _read(response: aiohttp.ClientResponse, headers: Mapping[str, str], cap: int) -> bytes:
    length = headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) > cap:
        raise ResponseTooLarge(f"Content-Length {length} exceeds the {cap}-byte cap")
    encoding = headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("identity", ""):
        body = _Body(cap)
    elif encoding in _COMPRESSED:
        body = _InflatedBody(cap)
    else:
        raise DocumentError(f"unsupported Content-Encoding {encoding!r}")
    content = response.content
    while chunk := await content.readany():
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

    aiohttp's and httpx's decoders inflate a whole chunk at once, so a 16 KiB chunk of a gzip
    bomb would become ~16 MiB in memory before any check; here zlib stops one byte past the cap.
    The compressed bytes count against the cap as well: empty deflate blocks inflate to
    nothing, and zlib sets aside, uncounted, whatever follows the end of the stream.
    """

    def __init__(self, cap: int) -> None:
        super().__init__(cap)
        self._inflater = zlib.decompressobj(_GZIP_OR_ZLIB)
        self._received = 0

    def feed(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received > self._cap:
            raise ResponseTooLarge(f"the compressed body exceeds the {self._cap}-byte cap")
        try:
            # Output that reaches the limit is over the cap, and feed() raises on it: no
            # input is ever left unconsumed otherwise.
            super().feed(self._inflater.decompress(chunk, self._cap - self._size + 1))
        except zlib.error as exc:
            raise DocumentError(f"corrupt compressed body: {exc}") from None
        if self._inflater.unused_data:
            raise DocumentError("data after the end of the compressed body")

    def finish(self) -> bytes:
        if not self._inflater.eof:
            raise DocumentError("truncated compressed body")
        return super().finish()


def _fetch_error(exc: BaseException, url: str) -> FetchError:
    """Our error for a failure below HTTP, told apart by its root causes.

    aiohttp wraps the errors of its resolver and sockets (a `RefusedAddress` from the guard, a
    timeout), so the causes it chains are what is looked at.
    """
    for cause in _causes(exc):
        if isinstance(cause, RefusedAddress):
            return BlockedAddress(f"{url}: {cause}")
        if isinstance(cause, TimeoutError):
            return UpstreamTimeout(f"{url}: timed out")
        if isinstance(cause, aiohttp.InvalidURL):
            return InvalidUrl(f"{url}: {cause}")
    return UpstreamUnavailable(f"{url}: {exc}")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
