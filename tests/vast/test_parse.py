"""`parse_vast`: versions, the IAB namespace, what is read, and hostile documents."""

from __future__ import annotations

import time

import msgspec
import pytest

from streams.vast import (
    DocumentError,
    ForbiddenDoctype,
    SchemaError,
    UnsupportedVersion,
    parse_vast,
)
from streams.vast.parse import is_safe_url
from tests.upstream import inline, vast, wrapper

IAB_NAMESPACE = "http://www.iab.com/VAST"


@pytest.mark.parametrize("version", ["2.0", "3.0", "4.0", "4.1", "4.2", "4.3"])
def test_versions_2_to_4_are_read(version: str) -> None:
    document = parse_vast(vast(inline(), version=version).encode())
    assert document.version == version
    assert [ad.id for ad in document.ads] == ["inline-1"]


@pytest.mark.parametrize("version", ["1.0", "5.0", "", "x"])
def test_other_versions_are_102(version: str) -> None:
    with pytest.raises(UnsupportedVersion) as raised:
        parse_vast(vast(inline(), version=version).encode())
    assert raised.value.code == 102


def test_a_missing_version_is_102() -> None:
    with pytest.raises(UnsupportedVersion):
        parse_vast(b"<VAST><Ad><InLine/></Ad></VAST>")


def test_vast_1_root_is_102() -> None:
    with pytest.raises(UnsupportedVersion):
        parse_vast(b"<VideoAdServingTemplate><Ad/></VideoAdServingTemplate>")


def test_the_iab_namespace_is_read_like_no_namespace() -> None:
    plain = parse_vast(vast(inline(), wrapper("http://next.invalid/")).encode())
    namespaced = parse_vast(
        vast(inline(), wrapper("http://next.invalid/"), xmlns=IAB_NAMESPACE).encode()
    )
    assert namespaced.namespace == "http://www.iab.com/VAST"
    assert msgspec.structs.replace(namespaced, namespace="") == plain
    assert plain.ads[0].creatives[0].media_files[0].url == "http://cdn.invalid/ad.mp4"
    assert plain.ads[1].wrapper is not None


def test_another_namespace_is_101() -> None:
    with pytest.raises(SchemaError) as raised:
        parse_vast(vast(inline(), xmlns="urn:not-vast").encode())
    assert raised.value.code == 101


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>no</body></html>",
        b'<VAST version="4.0"><Ad id="x"><Extension/></Ad></VAST>',
        b'<VAST version="4.0"><Ad><Wrapper><AdSystem>a</AdSystem></Wrapper></Ad></VAST>',
        b'<VAST version="4.0"><Ad><Wrapper><VASTAdTagURI>  </VASTAdTagURI></Wrapper></Ad></VAST>',
    ],
    ids=["not-vast", "ad-without-inline-or-wrapper", "wrapper-without-uri", "blank-uri"],
)
def test_invalid_vast_is_101(body: bytes) -> None:
    with pytest.raises(SchemaError):
        parse_vast(body)


def test_root_errors_and_no_ads() -> None:
    document = parse_vast(vast(errors=["http://e.invalid/[ERRORCODE]"]).encode())
    assert document.ads == ()
    assert document.errors == ("http://e.invalid/[ERRORCODE]",)


def test_wrapper_attributes_and_defaults() -> None:
    document = parse_vast(
        vast(
            wrapper("a"),
            wrapper(
                "b",
                attributes='followAdditionalWrappers="false" allowMultipleAds="TRUE"'
                ' fallbackOnNoAd="0"',
            ),
            wrapper("c", attributes='allowMultipleAds="maybe" fallbackOnNoAd="true"'),
        ).encode()
    )
    rules = [
        (w.ad_tag_uri, w.follow_additional_wrappers, w.allow_multiple_ads, w.fallback_on_no_ad)
        for ad in document.ads
        if (w := ad.wrapper) is not None
    ]
    assert rules == [
        ("a", True, False, None),
        ("b", False, True, False),
        ("c", True, False, True),
    ]


def test_sequence_and_numbers_are_read_leniently() -> None:
    document = parse_vast(
        b'<VAST version="3.0"><Ad id="a" sequence="2"><InLine><Creatives><Creative'
        b' sequence="x"><Linear><MediaFiles><MediaFile width="640" height="wide"'
        b' bitrate="9999999999999999999999">http://m.invalid/a.mp4</MediaFile></MediaFiles>'
        b"</Linear></Creative></Creatives></InLine></Ad></VAST>"
    )
    (ad,) = document.ads
    assert ad.sequence == 2
    assert ad.creatives[0].sequence is None
    media = ad.creatives[0].media_files[0]
    assert (media.width, media.height, media.bitrate) == (640, None, 9999999999999999999999)


def test_unknown_creative_kinds_are_skipped() -> None:
    document = parse_vast(
        b'<VAST version="4.0"><Ad><InLine><Creatives><Creative id="x"><CreativeExtensions/>'
        b"</Creative></Creatives></InLine></Ad></VAST>"
    )
    assert document.ads[0].creatives == ()


def test_declared_encoding_is_kept() -> None:
    body = vast(inline(ad_id="caf\u00e9")).replace("UTF-8", "ISO-8859-1").encode("latin-1")
    document = parse_vast(body)
    assert document.encoding == "iso-8859-1"
    assert document.ads[0].id == "caf\u00e9"


# Hostile documents: refused before lxml parses anything, with 100.

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE VAST [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<VAST version="4.0"><Ad><InLine><AdTitle>&secret;</AdTitle></InLine></Ad></VAST>"""

BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n<!ENTITY lol "lol">\n'
    + b"".join(
        b'<!ENTITY lol%d "%s">\n' % (n, (b"&lol%d;" % (n - 1) if n > 1 else b"&lol;") * 10)
        for n in range(1, 10)
    )
    + b']>\n<VAST version="4.0"><Ad><InLine><AdTitle>&lol9;</AdTitle></InLine></Ad></VAST>'
)


@pytest.mark.parametrize(
    "body",
    [
        XXE,
        BILLION_LAUGHS,
        b'<!-- c --><?pi x?>\n<!DOCTYPE VAST SYSTEM "http://evil.invalid/vast.dtd"><VAST/>',
        b"\xef\xbb\xbf<!doctype VAST><VAST/>",
    ],
    ids=["xxe", "billion-laughs", "external-dtd-after-comment-and-pi", "bom-lowercase"],
)
def test_a_doctype_is_refused_up_front(body: bytes) -> None:
    started = time.perf_counter()
    with pytest.raises(ForbiddenDoctype) as raised:
        parse_vast(body)
    assert raised.value.code == 100
    assert time.perf_counter() - started < 1.0  # refused before anything is expanded


def test_a_doctype_inside_cdata_is_content_not_a_declaration() -> None:
    # Companion HTML often starts with <!DOCTYPE html>; only the prolog may declare a DTD.
    body = (
        b'<VAST version="4.0"><Ad><InLine><Creatives><Creative><CompanionAds><Companion>'
        b"<HTMLResource><![CDATA[<!DOCTYPE html><p>hi</p>]]></HTMLResource>"
        b"<CompanionClickThrough>http://c.invalid/</CompanionClickThrough>"
        b"</Companion></CompanionAds></Creative></Creatives></InLine></Ad></VAST>"
    )
    assert parse_vast(body).ads[0].creatives[0].click_through == "http://c.invalid/"


@pytest.mark.parametrize(
    "body",
    [
        '<?xml version="1.0" encoding="UTF-16"?><VAST version="4.0"/>'.encode("utf-16"),
        b'<?xml version="1.0" encoding="UTF-7"?><VAST version="4.0"/>',
        b"<VAST version='4.0'><Ad>",
        b"",
        b"\x00\x01\x02",
    ],
    ids=["utf-16", "utf-7", "truncated", "empty", "binary"],
)
def test_unreadable_documents_are_100(body: bytes) -> None:
    with pytest.raises(DocumentError) as raised:
        parse_vast(body)
    assert raised.value.code == 100


def test_an_undeclared_entity_is_100_not_an_expansion() -> None:
    with pytest.raises(DocumentError):
        parse_vast(b'<VAST version="4.0"><Ad><InLine><AdTitle>&ext;</AdTitle></InLine></Ad></VAST>')


def test_nesting_past_libxml2s_depth_limit_is_100() -> None:
    depth = 10_000
    body = b'<VAST version="4.0">' + b"<x>" * depth + b"</x>" * depth + b"</VAST>"
    with pytest.raises(DocumentError):
        parse_vast(body)


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("https://ads.example.com/i?x=1", True),
        ("HTTP://ads.example.com/i", True),
        ("//cdn.example.com/v.mp4", True),
        ("/relative/path", True),
        ("[DOMAIN]/pixel?t=[TIMESTAMP]", True),
        ("javascript:alert(1)", False),
        (" JaVa\tScRiPt:alert(1)", False),
        ("java\nscript:alert(1)", False),
        ("\x00javascript:alert(1)", False),
        ("data:text/html,<script>", False),
        ("file:///etc/passwd", False),
        ("ftp://files.example.com/a", False),
        ("vbscript:msgbox", False),
    ],
)
def test_only_http_urls_are_handed_on(url: str, safe: bool) -> None:
    assert is_safe_url(url) is safe
