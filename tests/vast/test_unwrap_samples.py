"""The unwrapped document of every real sample: IAB's VAST_Samples (75 documents, VAST 1.0 to
4.2) and vast-client-js's own 16, served on loopback (IAB's Wrappers point at GitHub and
Tremor's demo host: rewritten to the same files here).

For each document that resolves: the unwrapped document holds the served ads only, no Wrapper,
every URL of the chain's Wrappers, validates against IAB's vast_4.2.xsd where its InLine did,
and a real player parser (@dailymotion/vast-client 6.4.5, `tests/vast/player/`) finds in it
the same trackers as when it resolves the original chain itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from lxml import etree

from models.context import SessionContext
from streams.vast import VastResult, VastUpstream
from tests.upstream import SAMPLES, VastServer

ROOT = Path(__file__).resolve().parents[2]
IAB_SAMPLES = ROOT / "tests/data/iab-vast-samples"
XSD = ROOT / "tests/data/iab-vast/vast_4.2.xsd"
PLAYER_SOURCE = ROOT / "tests/vast/player"
PLAYER = Path(os.environ.get("ADSTREAM_VAST_PLAYER", ROOT / ".cache/vast-player"))
GITHUB = b"https://raw.githubusercontent.com/InteractiveAdvertisingBureau/VAST_Samples/master/"
TREMOR = b"http://demo.tremormedia.com/proddev/vast/"
TREMOR_LOCAL = "VAST 1-2.0 Samples/Tremor-Video-Samples/"
# Elements whose text is a URL a Wrapper hands on to be fired or opened.
AD_URLS = ("Impression", "Error", "Viewable", "NotViewable", "ViewUndetermined")
CREATIVE_URLS = (
    "Tracking", "ClickTracking", "CustomClick", "CompanionClickTracking", "NonLinearClickTracking",
)  # fmt: skip
# A Wrapper's linear (nonlinear) trackers go to the InLine's linear (nonlinear) creatives:
# with none of that kind, they have nowhere to go, for vast-client-js too.
KINDS = {"Linear": "linear", "NonLinearAds": "nonlinear", "CompanionAds": "companion"}

IAB = sorted(str(path.relative_to(IAB_SAMPLES)) for path in IAB_SAMPLES.rglob("*.xml"))
VAST_CLIENT_JS = sorted(path.name for path in SAMPLES.glob("*.xml"))


def local_path(name: str) -> str:
    return "/iab/" + name.replace(" ", "_")


def rewritten(body: bytes) -> bytes:
    """`body` with its Wrappers pointing at the local copies of what they name."""
    for prefix, local in ((GITHUB, ""), (TREMOR, TREMOR_LOCAL)):
        while prefix in body:
            start = body.index(prefix)
            end = start + len(prefix)
            while body[end : end + 1] not in (b"]", b"<", b" ", b"\n", b""):
                end += 1
            name = local + unquote(body[start + len(prefix) : end].decode())
            body = body[:start] + b"LOCAL" + local_path(name).encode() + body[end:]
    return body


@dataclass
class Case:
    url: str
    result: VastResult
    sources: list[etree._Element] = field(default_factory=list)
    chain_trackers: dict[str, Any] = field(default_factory=dict)
    document_trackers: dict[str, Any] = field(default_factory=dict)


def install_player() -> Path:
    """The player parser, installed by the Makefile target `make test` depends on."""
    subprocess.run(
        ["make", "--no-print-directory", "-s", f"PLAYER={PLAYER}", f"{PLAYER}/.installed"],
        cwd=ROOT,
        check=True,
    )
    return PLAYER / "node_modules"


async def judge(chains: list[str], documents: list[str]) -> dict[str, list[dict[str, Any]]]:
    """What the player finds resolving each chain, and parsing each document. Run beside the
    event loop, which serves the chains."""
    modules = install_player()
    process = await asyncio.create_subprocess_exec(
        "node",
        str(PLAYER_SOURCE / "trackers.js"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_PATH": str(modules)},
    )
    stdin = json.dumps({"chains": chains, "documents": documents}).encode()
    stdout, stderr = await asyncio.wait_for(process.communicate(stdin), timeout=300)
    assert process.returncode == 0, stderr.decode()[-2000:]
    judged: dict[str, list[dict[str, Any]]] = json.loads(stdout)
    return judged


@pytest.fixture(scope="module")
async def cases(vast_server: VastServer) -> AsyncIterator[dict[str, Case]]:
    for name in IAB:
        body = rewritten((IAB_SAMPLES / name).read_bytes())
        vast_server.add(body, path=local_path(name))
    urls = {name: vast_server.url(local_path(name)) for name in IAB}
    urls |= {f"vast-client-js/{name}": vast_server.sample(name) for name in VAST_CLIENT_JS}
    context = SessionContext.create({"user_id": "u-1"}, timestamp=1_700_000_000_123)
    found: dict[str, Case] = {}
    async with VastUpstream(fire_error_pixels=False) as upstream:
        for name, url in urls.items():
            # LOCAL stands for the server: the samples' Wrappers name absolute URLs.
            for path in IAB:
                route = vast_server.route(vast_server.url(local_path(path)))
                reply = route.replies[0]
                reply.body = reply.body.replace(b"LOCAL/", vast_server.base_url.encode() + b"/")
            found[name] = Case(url, await upstream.fetch(url, context=context))
    served = [case for case in found.values() if case.result.status == "inline"]
    judged = await judge([case.url for case in served], [case.result.vast or "" for case in served])
    for case, chain, document in zip(served, judged["chains"], judged["documents"], strict=True):
        case.chain_trackers = chain
        case.document_trackers = document
    yield found


def source(url: str) -> bytes:
    path = urlsplit(url).path
    if path.startswith("/samples/"):
        return (SAMPLES / path.removeprefix("/samples/")).read_bytes()
    name = next(name for name in IAB if local_path(name) == path)
    return (IAB_SAMPLES / name).read_bytes()


def local(tag: object) -> str:
    return str(tag).rpartition("}")[2]


def texts(element: etree._Element, names: tuple[str, ...]) -> list[str]:
    return [
        node.text.strip()
        for node in element.iter()
        if isinstance(node.tag, str)
        and local(node.tag) in names
        and node.text
        and node.text.strip()
    ]


def validates(body: bytes) -> bool:
    schema = etree.XMLSchema(etree.parse(XSD))
    return bool(schema.validate(etree.fromstring(body)))


def test_every_sample_is_here() -> None:
    assert (len(IAB), len(VAST_CLIENT_JS)) == (75, 16)


@pytest.mark.parametrize("name", [*IAB, *(f"vast-client-js/{name}" for name in VAST_CLIENT_JS)])
async def test_the_unwrapped_document(cases: dict[str, Case], name: str) -> None:
    case = cases[name]
    result = case.result
    if result.status != "inline":
        assert result.vast is None
        return
    assert result.vast is not None
    document = etree.fromstring(result.vast.encode())
    ads = [child for child in document if local(child.tag) == "Ad"]
    # Only the served ads: nothing the chain excluded, no Wrapper.
    assert [ad.get("id") for ad in ads] == [ad.id for ad in result.ads]
    assert not [node for node in document.iter() if local(node.tag) == "Wrapper"]
    # Every URL each Wrapper of the chain hands on is in the document.
    held = set(texts(document, AD_URLS + CREATIVE_URLS))
    kinds = {"companion"} | {creative.kind for ad in result.ads for creative in ad.creatives}
    for hop in result.chain[:-1]:
        wrappers = [ad for ad in etree.fromstring(source(hop.url)) if local(ad.tag) == "Ad"]
        if len(wrappers) != 1:  # which Wrapper led on is for the tests of pods
            continue
        expected = set(texts(wrappers[0], AD_URLS))
        for content in wrappers[0].iter():
            if KINDS.get(local(content.tag)) in kinds:
                expected |= set(texts(content, CREATIVE_URLS))
        assert expected <= held, hop.url
    # IAB's schema: a document whose InLine validated still does once unwrapped.
    if validates(source(result.chain[-1].url)):
        schema = etree.XMLSchema(etree.parse(XSD))
        assert schema.validate(document), schema.error_log
    # The judge: the player finds the same trackers in the one document as in the chain.
    chain, unwrapped = case.chain_trackers, case.document_trackers
    assert "error" not in unwrapped, unwrapped
    chain_ads = {ad["id"]: ad["trackers"] for ad in chain.get("ads", [])}
    for ad in unwrapped["ads"]:
        if ad["id"] in chain_ads:
            assert ad["trackers"] == chain_ads[ad["id"]], ad["id"]


async def test_a_sample_served_again_from_the_memo_is_what_was_built(
    cases: dict[str, Case],
) -> None:
    context = SessionContext.create({"user_id": "u-2"})
    async with VastUpstream(fire_error_pixels=False) as upstream:
        for name, case in cases.items():
            first = await upstream.fetch(case.url, context=context)
            again = await upstream.fetch(case.url, context=context)
            assert (again.status, again.error_code) == (first.status, first.error_code), name
            assert again.ads == first.ads == case.result.ads, name
            if again.ads:
                assert again.ads is first.ads, name  # the memo's
