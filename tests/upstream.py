"""A real HTTP server on 127.0.0.1 playing VAST upstreams, and small VAST document builders.

Used by the resolver's tests and by the pipeline's (whose worker process fetches from it).

The server serves vast-client-js's samples under `/samples/` and, for each test, routes it
registers with `add` (unique paths, so tests never see each other's traffic). It records every
request, so tests check what an upstream actually received: cookies, expanded macros, error
codes in pixels, how many attempts, how many at once.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDictProxy

SAMPLES = Path(__file__).resolve().parent / "data/vast-client-js-samples"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Reply:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    path: str
    query: str
    headers: CIMultiDictProxy[str]
    at: float


@dataclass
class Route:
    replies: list[Reply]
    """Served in turn; the last one again once the others are used up."""
    handler: Handler | None = None
    seen: list[Seen] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0


class VastServer:
    def __init__(self) -> None:
        self.base_url = ""
        self._routes: dict[str, Route] = {}
        self._paths = itertools.count()
        self.unrouted: dict[str, int] = defaultdict(int)

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def sample(self, name: str) -> str:
        return self.url(f"/samples/{name}")

    def add(
        self,
        body: bytes | str | Iterable[Reply] = b"",
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
        name: str = "doc.xml",
        path: str | None = None,
        handler: Handler | None = None,
    ) -> str:
        """Register a route at `path` (by default a fresh one ending in `name`) and return its
        URL. `body` may be a sequence of `Reply`s, served one per request."""
        path = path or f"/r{next(self._paths)}/{name}"
        self._routes[path] = Route([], handler)
        self.set(self.url(path), body, status=status, headers=headers, delay=delay)
        return self.url(path)

    def set(
        self,
        url: str,
        body: bytes | str | Iterable[Reply],
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Change what a route serves (routes that point at each other need both URLs first)."""
        if isinstance(body, (bytes, str)):
            encoded = body.encode() if isinstance(body, str) else body
            self.route(url).replies = [Reply(encoded, status, headers or {}, delay)]
        else:
            self.route(url).replies = list(body)

    def fresh_path(self) -> str:
        return f"/r{next(self._paths)}"

    def route(self, url: str) -> Route:
        return self._routes[urlsplit(url).path]

    def seen(self, url: str) -> list[Seen]:
        return self.route(url).seen

    async def handle(self, request: web.Request) -> web.StreamResponse:
        route = self._routes.get(request.path)
        if route is None:
            self.unrouted[request.path] += 1
            return web.Response(status=404)
        route.seen.append(Seen(request.path, request.query_string, request.headers, time.time()))
        route.in_flight += 1
        route.max_in_flight = max(route.max_in_flight, route.in_flight)
        try:
            if route.handler is not None:
                return await route.handler(request)
            reply = route.replies[min(len(route.seen), len(route.replies)) - 1]
            if reply.delay:
                await asyncio.sleep(reply.delay)
            return web.Response(body=reply.body, status=reply.status, headers=reply.headers)
        finally:
            route.in_flight -= 1


async def serve(server: VastServer) -> web.AppRunner:
    """Start `server` on 127.0.0.1 and 127.0.0.2 (one port), returning the runner to clean up."""
    app = web.Application()
    app.router.add_static("/samples/", SAMPLES)
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    # 127.0.0.2 too: the SSRF tests need a second loopback address that really answers.
    for host in ("127.0.0.1", "127.0.0.2"):
        site = web.TCPSite(runner, host, server_port(runner))
        await site.start()
    server.base_url = f"http://127.0.0.1:{server_port(runner)}"
    return runner


def server_port(runner: web.AppRunner) -> int:
    """The port of the runner's first site, or 0 (any free port) before it has one."""
    return int(runner.addresses[0][1]) if runner.addresses else 0


def inline(
    *,
    ad_id: str = "inline-1",
    sequence: int | None = None,
    impression: str = "http://pixels.invalid/impression",
    error: str | None = None,
    tracking: Iterable[tuple[str, str]] = (("start", "http://pixels.invalid/start"),),
    click_tracking: Iterable[str] = (),
    media: str = "http://cdn.invalid/ad.mp4",
    creatives: bool = True,
) -> str:
    """One `<Ad><InLine>` with a linear creative."""
    attributes = f' id="{ad_id}"' + ("" if sequence is None else f' sequence="{sequence}"')
    events = "".join(f'<Tracking event="{e}"><![CDATA[{u}]]></Tracking>' for e, u in tracking)
    clicks = "".join(f"<ClickTracking><![CDATA[{u}]]></ClickTracking>" for u in click_tracking)
    creative = (
        f"<Creatives><Creative id='c-{ad_id}'><Linear><Duration>00:00:15</Duration>"
        f"<TrackingEvents>{events}</TrackingEvents><VideoClicks>{clicks}</VideoClicks>"
        f"<MediaFiles><MediaFile delivery='progressive' type='video/mp4' width='640'"
        f" height='360'><![CDATA[{media}]]></MediaFile></MediaFiles></Linear></Creative>"
        "</Creatives>"
        if creatives
        else "<Creatives/>"
    )
    error_element = "" if error is None else f"<Error><![CDATA[{error}]]></Error>"
    return (
        f"<Ad{attributes}><InLine><AdSystem>test</AdSystem><AdTitle>{ad_id}</AdTitle>"
        f"<Impression><![CDATA[{impression}]]></Impression>{error_element}{creative}"
        "</InLine></Ad>"
    )


def wrapper(
    uri: str,
    *,
    ad_id: str = "wrapper-1",
    sequence: int | None = None,
    impression: str = "http://pixels.invalid/wrapper-impression",
    error: str | None = None,
    tracking: Iterable[tuple[str, str]] = (),
    attributes: str = "",
) -> str:
    """One `<Ad><Wrapper>` pointing at `uri`."""
    ad_attributes = f' id="{ad_id}"' + ("" if sequence is None else f' sequence="{sequence}"')
    events = "".join(f'<Tracking event="{e}"><![CDATA[{u}]]></Tracking>' for e, u in tracking)
    error_element = "" if error is None else f"<Error><![CDATA[{error}]]></Error>"
    return (
        f"<Ad{ad_attributes}><Wrapper {attributes}><AdSystem>test</AdSystem>"
        f"<VASTAdTagURI><![CDATA[{uri}]]></VASTAdTagURI>{error_element}"
        f"<Impression><![CDATA[{impression}]]></Impression>"
        f"<Creatives><Creative><Linear><TrackingEvents>{events}</TrackingEvents></Linear>"
        "</Creative></Creatives></Wrapper></Ad>"
    )


def vast(*ads: str, version: str = "4.2", errors: Iterable[str] = (), xmlns: str = "") -> str:
    root_errors = "".join(f"<Error><![CDATA[{url}]]></Error>" for url in errors)
    namespace = f' xmlns="{xmlns}"' if xmlns else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<VAST version="{version}"{namespace}>'
        f"{root_errors}{''.join(ads)}</VAST>"
    )


def fallbacks(target: str, count: int) -> str:
    """A document of `count` stand-alone Wrappers, each a fallback for the one before; as
    small as a Wrapper gets, so that 5,000 fit under the body cap."""
    path = urlsplit(target).path
    return vast(
        *(
            f'<Ad id="w{n}"><Wrapper><AdSystem>t</AdSystem><VASTAdTagURI>{path}</VASTAdTagURI>'
            "</Wrapper></Ad>"
            for n in range(count)
        )
    )


def pod_with_macros(ads: int, size: int) -> str:
    """A pod of `ads` InLines padded to about `size` characters, every ad holding macros."""
    pod = [
        inline(
            ad_id=f"a{n}",
            sequence=n + 1,
            impression=f"http://pixels.invalid/i?cb=[CACHEBUSTING]&n={n}",
        )
        for n in range(ads)
    ]
    document = vast(*pod)
    padding = "<!--" + "[TIMESTAMP]x" * ((size - len(document)) // 12) + "-->"
    return document.replace("</VAST>", padding + "</VAST>")


def merge_bomb(server: VastServer, *, wrappers: int, tracking: int, creatives: int) -> str:
    """A chain whose Wrappers each add `tracking` URLs to every one of the InLine's
    `creatives`: small documents, a product that is not."""
    events = [("start", f"http://t.invalid/{n}") for n in range(tracking)]
    bare = "<Creative><Linear><Duration>00:00:15</Duration></Linear></Creative>"
    document = vast(inline()).replace("</Creatives>", bare * creatives + "</Creatives>")
    url = server.add(document)
    for n in range(wrappers):
        url = server.add(vast(wrapper(url, ad_id=f"w{n}", tracking=events)))
    return url
