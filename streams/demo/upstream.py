"""The demo's VAST upstream: an aiohttp server on 127.0.0.1 playing an ad server.

It serves `/vast/<name>`: the documents shipped in `streams/demo/vast/` (an InLine linear ad,
a Wrapper leading to it, a no-ad answer) or, in a checkout that has them beside it, the real
vast-client-js samples in their place. A tag's query decides how a share of requests goes
wrong, so that the demo shows those outcomes too: `no_fill=0.12` answers 12% of requests
with no ad, `fail=0.02` answers 2% with HTTP 503. Which requests those are follows from the
tag's `correlator` parameter (the `[CORRELATOR]` macro), so a request and its retries get the
same answer and a replay the same outcomes. `/pixel/<event>` counts the pixels it receives.

The shipped documents and `campaigns.json` name the upstream `http://127.0.0.1:6070`; when the
server listens elsewhere, it rewrites that origin in what it serves, and `rebase` does the
same for the campaigns.
"""

from __future__ import annotations

import random
import zlib
from collections import Counter
from pathlib import Path

import msgspec
from aiohttp import web

from models.events import Campaign

HOST = "127.0.0.1"
DEFAULT_PORT = 6070
DEFAULT_ORIGIN = f"http://{HOST}:{DEFAULT_PORT}"
VAST_DIR = Path(__file__).with_name("vast")
OWN_DOCUMENTS = ("inline.xml", "wrapper.xml", "no-ad.xml")
NO_AD = "no-ad.xml"
SAMPLES = Path(__file__).resolve().parents[2] / "tests/data/vast-client-js-samples"
"""Real-world documents, present beside a checkout of the project (never in a package)."""
SAMPLE_STAND_INS = {"inline.xml": "inline-linear.xml", "wrapper.xml": "wrapper-a.xml"}
"""Which sample serves in place of which own document. The no-ad answer stays ours: the
samples' <Error> pixels point at example.com, and a demo should not fire pixels at the
internet."""


def load_documents(origin: str, samples: Path | None = SAMPLES) -> dict[str, bytes]:
    """The documents by name, pixels pointing at `origin`; samples in place where present."""
    documents = {
        name: (VAST_DIR / name).read_bytes().replace(DEFAULT_ORIGIN.encode(), origin.encode())
        for name in OWN_DOCUMENTS
    }
    if samples is not None and samples.is_dir():
        found = {path.name: path.read_bytes() for path in samples.glob("*.xml")}
        # All of them, since a wrapper sample names the next hop by its file name.
        documents |= found
        documents |= {ours: found[theirs] for ours, theirs in SAMPLE_STAND_INS.items()}
    return documents


def rebase(campaign: Campaign, origin: str) -> Campaign:
    """The campaign with its tag on the upstream at `origin` instead of the default one."""
    if origin == DEFAULT_ORIGIN or not campaign.vast_url.startswith(DEFAULT_ORIGIN):
        return campaign
    return msgspec.structs.replace(
        campaign, vast_url=origin + campaign.vast_url.removeprefix(DEFAULT_ORIGIN)
    )


def _draw(correlator: str | None) -> float:
    """A number in [0, 1) fixed by the correlator (any, when the tag sends none)."""
    if correlator is None:
        return random.random()
    return zlib.crc32(correlator.encode()) / 2**32


def _share(request: web.Request, name: str) -> float:
    try:
        return min(max(float(request.query.get(name, "0")), 0.0), 1.0)
    except ValueError:
        return 0.0


class DemoUpstream:
    def __init__(self, samples: Path | None = SAMPLES) -> None:
        self.samples = samples
        self.origin = ""
        self.documents: dict[str, bytes] = {}
        self.answers: Counter[str] = Counter()
        """Tag requests by answer: `ad`, `no_ad`, `503`, `404`."""
        self.pixels: Counter[str] = Counter()
        """Pixels received by event; error pixels as `error <IAB code>`."""
        self._runner: web.AppRunner | None = None

    @property
    def using_samples(self) -> bool:
        return self.samples is not None and self.samples.is_dir()

    def url(self, name: str) -> str:
        return f"{self.origin}/vast/{name}"

    async def start(self, port: int = DEFAULT_PORT) -> str:
        """Listen on `port` of 127.0.0.1, or any free port if that one is taken; returns the
        origin (`http://127.0.0.1:<port>`)."""
        app = web.Application()
        app.router.add_get("/vast/{name}", self._vast)
        app.router.add_get("/pixel/{event}", self._pixel)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, HOST, port).start()
        except OSError:
            await web.TCPSite(self._runner, HOST, 0).start()
        self.origin = f"http://{HOST}:{self._runner.addresses[0][1]}"
        self.documents = load_documents(self.origin, self.samples)
        return self.origin

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _vast(self, request: web.Request) -> web.Response:
        document = self.documents.get(request.match_info["name"])
        if document is None:
            self.answers["404"] += 1
            return web.Response(status=404)
        draw = _draw(request.query.get("correlator"))
        fail = _share(request, "fail")
        if draw < fail:
            self.answers["503"] += 1
            return web.Response(status=503, text="the demo's upstream is unavailable")
        if draw < fail + _share(request, "no_fill"):
            self.answers["no_ad"] += 1
            document = self.documents[NO_AD]
        else:
            self.answers["ad"] += 1
        return web.Response(body=document, content_type="application/xml")

    async def _pixel(self, request: web.Request) -> web.Response:
        event = request.match_info["event"]
        code = request.query.get("code")
        self.pixels[f"{event} {code}" if event == "error" and code else event] += 1
        return web.Response(status=204)
