"""Property tests: whatever bytes an upstream sends, the parser raises only its typed errors
and a resolution never raises at all."""

from __future__ import annotations

import ipaddress

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.context import SessionContext
from streams.vast import RetryPolicy, VastError, VastUpstream, parse_vast
from streams.vast.guard import is_public
from tests.upstream import SAMPLES, VastServer, vast, wrapper

PARSE_CODES = {100, 101, 102}
RESULT_CODES = {None, 100, 101, 102, 300, 301, 302, 303}
SAMPLE_BODIES = [path.read_bytes() for path in sorted(SAMPLES.glob("*.xml"))]
# Fragments that steer mutations towards the parser's decisions.
FRAGMENTS = [
    b"<!DOCTYPE VAST>",
    b'<!ENTITY e SYSTEM "file:///etc/passwd">',
    b"&e;",
    b"&amp;",
    b"<![CDATA[",
    b"]]>",
    b"<!--",
    b"-->",
    b"<Ad>",
    b"</Ad>",
    b'<Ad sequence="2">',
    b"<InLine>",
    b"</InLine>",
    b"<Wrapper>",
    b"</Wrapper>",
    b"<VASTAdTagURI>http://127.0.0.1:1/x</VASTAdTagURI>",
    b"<Creative><Linear><MediaFiles><MediaFile>u</MediaFile></MediaFiles></Linear></Creative>",
    b' version="1.0"',
    b' version="4.9"',
    b' xmlns="http://www.iab.com/VAST"',
    b' encoding="UTF-16"',
    b"\x00",
    b"\xff\xfe",
    b"\xef\xbb\xbf",
    b"[ERRORCODE]",
    b"%%CACHEBUSTING%%",
]


@st.composite
def mutated_vast(draw: st.DrawFn) -> bytes:
    body = bytearray(draw(st.sampled_from(SAMPLE_BODIES)))
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(body)))
        operation = draw(st.sampled_from(["replace", "delete", "insert", "truncate"]))
        if operation == "replace" and position < len(body):
            body[position] = draw(st.integers(0, 255))
        elif operation == "delete":
            del body[position : position + draw(st.integers(1, 200))]
        elif operation == "insert":
            body[position:position] = draw(st.sampled_from(FRAGMENTS) | st.binary(max_size=8))
        elif operation == "truncate":
            del body[position:]
    return bytes(body)


NAMES = [
    "Ad", "InLine", "Wrapper", "Creatives", "Creative", "Linear", "NonLinearAds", "NonLinear",
    "CompanionAds", "Companion", "TrackingEvents", "Tracking", "MediaFiles", "MediaFile",
    "VideoClicks", "ClickThrough", "ClickTracking", "Impression", "Error", "VASTAdTagURI",
    "VASTAdTagURL", "URL", "Duration", "AdSystem", "AdTitle", "Extensions", "x",
]  # fmt: skip
ATTRIBUTES = [
    "id", "sequence", "event", "offset", "width", "height", "bitrate", "type", "adId",
    "followAdditionalWrappers", "allowMultipleAds", "fallbackOnNoAd", "skipoffset",
]  # fmt: skip
TEXT = st.text(alphabet=st.characters(blacklist_categories=["Cs", "Cc"]), max_size=12)


def element(children: st.SearchStrategy[list[str]]) -> st.SearchStrategy[str]:
    def build(name: str, attributes: dict[str, str], text: str, kids: list[str]) -> str:
        attrs = "".join(f' {k}="{_escape(v)}"' for k, v in attributes.items())
        return f"<{name}{attrs}>{_escape(text)}{''.join(kids)}</{name}>"

    return st.builds(
        build,
        st.sampled_from(NAMES),
        st.dictionaries(st.sampled_from(ATTRIBUTES), TEXT | st.sampled_from(["1", "true"])),
        TEXT | st.just("http://127.0.0.1:1/[CACHEBUSTING]"),
        children,
    )


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")


vast_trees = st.builds(
    lambda version, ads: f'<VAST version="{version}">{"".join(ads)}</VAST>'.encode(),
    st.sampled_from(["2.0", "3.0", "4.2", "1.0"]),
    st.lists(
        st.recursive(element(st.just([])), lambda kids: element(st.lists(kids, max_size=4))),
        max_size=4,
    ),
)


def check_parse(body: bytes) -> None:
    try:
        document = parse_vast(body)
    except VastError as exc:
        assert exc.code in PARSE_CODES
    else:
        msgspec.json.encode(document)


@settings(max_examples=300)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_typed_errors(body: bytes) -> None:
    check_parse(body)


@settings(max_examples=300)
@given(mutated_vast())
def test_mutated_vast_raises_only_typed_errors(body: bytes) -> None:
    check_parse(body)


@settings(max_examples=300)
@given(vast_trees)
def test_vast_shaped_trees_raise_only_typed_errors(body: bytes) -> None:
    check_parse(body)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=st.one_of(mutated_vast(), vast_trees, st.binary(max_size=512)))
async def test_a_resolution_never_raises(vast_server: VastServer, body: bytes) -> None:
    # Served behind a Wrapper, so that failures also travel up a chain.
    target = vast_server.add(body)
    root = vast_server.add(vast(wrapper(target)))
    async with VastUpstream(
        timeout=2.0, retry=RetryPolicy(max_retries=1, backoff=0.001), fire_error_pixels=False
    ) as upstream:
        result = await upstream.fetch(root, context=SessionContext.create())
    assert result.error_code in RESULT_CODES
    assert (result.status == "inline") == (result.error_code is None) == bool(result.ads)
    msgspec.json.encode(result)


@given(st.integers(0, 2**32 - 1))
def test_embedded_ipv4_is_judged_as_the_ipv4_address(value: int) -> None:
    v4 = ipaddress.IPv4Address(value)
    for v6 in (
        ipaddress.IPv6Address(f"::ffff:{v4}"),
        ipaddress.IPv6Address(f"64:ff9b::{v4}"),
        ipaddress.IPv6Address((0x2002 << 112) | (value << 80)),
    ):
        assert is_public(v6) == is_public(v4)
