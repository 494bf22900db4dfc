"""`streams.macros`: IAB VAST macro substitution, checked against IAB's own registry file."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models import SessionContext
from streams.macros import IAB_MACROS, PER_REQUEST_MACROS, Macros, cache_key_template, expand

REGISTRY = Path(__file__).parent / "data/iab-vast/macros-data.json"
REGISTRY_MACROS: list[dict[str, Any]] = json.loads(REGISTRY.read_text())["macros"]
ARRAY_MACROS = {m["name"] for m in REGISTRY_MACROS if m["datatype"].startswith("Array")}

CONTEXT = SessionContext(
    timestamp=1_453_018_507_127,  # 2016-01-17T08:15:07.127Z, the registry's example instant
    correlator="123e4567-e89b-42d3-a456-426655440000",
    cachebusting="12345678",
    request_id="req-0b1e1a3c-4d5e-4f60-8a7b-9c0d1e2f3a4b",
    cookies={"user_id": "u-1"},
)
ENCODED_TIMESTAMP = "2016-01-17T08%3A15%3A07.127%2B00%3A00"
# Values the context gives whatever the params say; ERRORCODE comes from `error_code` only.
FROM_CONTEXT = {
    "TIMESTAMP": ENCODED_TIMESTAMP,
    "CACHEBUSTING": CONTEXT.cachebusting,
    "CORRELATOR": CONTEXT.correlator,
}
FROM_PARAMS = sorted(IAB_MACROS - FROM_CONTEXT.keys() - {"ERRORCODE"})

JS_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()")


def encode_uri_component(value: str) -> str:
    """An independent oracle: JavaScript's encodeURIComponent, character by character."""
    return "".join(
        char if char in JS_UNRESERVED else "".join(f"%{byte:02X}" for byte in char.encode())
        for char in value
    )


def spellings(name: str) -> list[str]:
    return [f"[{name}]", f"%%{name}%%"]


def registry_examples() -> list[tuple[str, str, str]]:
    """(macro, unencoded, encoded) from the registry's examples, for macros filled by params.

    An example is either a pair "Unencoded: <code>x</code> Encoded: <code>y</code>" or a
    single "<code>x</code>" whose value needs no encoding.
    """
    pair = re.compile(r"unencoded:\s*<code>(.*?)</code>.*?encoded:\s*<code>(.*?)</code>", re.I)
    plain = re.compile(r"\s*<code>([^<]*)</code>")
    examples = []
    for macro in REGISTRY_MACROS:
        name, example = macro["name"], str(macro.get("example") or "")
        if name not in FROM_PARAMS:
            continue
        pairs = pair.findall(example)
        if pairs:
            examples += [(name, raw, encoded) for raw, encoded in pairs]
        elif found := plain.match(example):
            examples.append((name, found[1], found[1]))
    return examples


# --- the registry, walked --------------------------------------------------------------------


def test_every_registry_macro_is_known_and_no_other() -> None:
    assert {m["name"] for m in REGISTRY_MACROS} == IAB_MACROS


@pytest.mark.parametrize("name", [m["name"] for m in REGISTRY_MACROS])
@pytest.mark.parametrize("spelling", [0, 1], ids=["brackets", "percents"])
def test_registry_macro_is_substituted_and_encoded_as_the_registry_says(
    name: str, spelling: int
) -> None:
    token = spellings(name)[spelling]
    value = "a b/c,d é"
    macros = Macros(CONTEXT, {name: value})
    if name == "ERRORCODE":
        assert macros.expand(f"x={token}", error_code=405) == "x=405"
    elif name in FROM_CONTEXT:
        assert macros.expand(f"x={token}") == f"x={FROM_CONTEXT[name]}"
    elif name in ARRAY_MACROS:
        assert macros.expand(f"x={token}") == "x=a%20b%2Fc,d%20%C3%A9"
    else:
        assert macros.expand(f"x={token}") == "x=a%20b%2Fc%2Cd%20%C3%A9"


@pytest.mark.parametrize("name", FROM_PARAMS)
def test_registry_macro_without_a_value_is_minus_one(name: str) -> None:
    expected = CONTEXT.correlator if name == "TRANSACTIONID" else "-1"
    assert Macros(CONTEXT).expand(f"[{name}]|%%{name}%%") == f"{expected}|{expected}"


@pytest.mark.parametrize(("name", "raw", "encoded"), registry_examples())
def test_registry_examples_encode_as_published(name: str, raw: str, encoded: str) -> None:
    assert Macros(CONTEXT, {name: raw}).expand(f"[{name}]") == encoded


def encoded_examples() -> list[tuple[str, str, str]]:
    """(macro, unencoded, encoded) of every registry entry that shows an encoded example."""
    pair = re.compile(
        r"unencoded:\s*<code>(.*?)</code>.*?encoded:\s*<code>(.*?)</code>", re.I | re.S
    )
    return [
        (macro["name"], raw, encoded)
        for macro in REGISTRY_MACROS
        for raw, encoded in pair.findall(str(macro.get("example") or ""))
    ]


def test_every_encoded_example_of_the_registry_is_walked() -> None:
    names = {name for name, _, _ in encoded_examples()}
    assert len(encoded_examples()) == 17 and "TIMESTAMP" in names


@pytest.mark.parametrize(("name", "raw", "encoded"), encoded_examples())
def test_a_firer_encodes_every_registry_example_as_published(
    name: str, raw: str, encoded: str
) -> None:
    # Through the fire-time call an edge uses, the value given as the firer knows it; the
    # registry's TIMESTAMP example is a local time, every reserved character percent-encoded.
    url = f"http://t.invalid/?v=[{name}]&w=%%{name}%%"
    assert (
        expand(url, CONTEXT, at=0, values={name: raw})
        == f"http://t.invalid/?v={encoded}&w={encoded}"
    )
    # The registry itself is encodeURIComponent's output (an array's commas kept bare).
    oracle = encode_uri_component(raw)
    assert encoded == (oracle.replace("%2C", ",") if name in ARRAY_MACROS else oracle)


def test_expand_fills_at_fire_time() -> None:
    url = "http://t.invalid/p?ts=[TIMESTAMP]&at=[ADPLAYHEAD]&cb=[CACHEBUSTING]&e=[ERRORCODE]&r=[REASON]"
    assert expand(url, CONTEXT, at=0, values={"adplayhead": "00:00:05.000"}) == (
        "http://t.invalid/p?ts=1970-01-01T00%3A00%3A00.000%2B00%3A00&at=00%3A00%3A05.000"
        f"&cb={CONTEXT.cachebusting}&e=[ERRORCODE]&r=-1"
    )
    assert expand("http://t.invalid/e=[ERRORCODE]", CONTEXT, at=0, values={"ERRORCODE": "405"}) == (
        "http://t.invalid/e=405"
    )


def test_registry_examples_cover_both_kinds_of_encoding() -> None:
    examples = registry_examples()
    assert any(raw != encoded for _, raw, encoded in examples)
    assert any("," in raw for name, raw, _ in examples if name in ARRAY_MACROS)


# --- TIMESTAMP, CACHEBUSTING, CORRELATOR from the context --------------------------------------


@pytest.mark.parametrize(
    ("millis", "iso"),
    [
        (1_453_018_507_127, "2016-01-17T08:15:07.127+00:00"),
        (1_453_018_507_005, "2016-01-17T08:15:07.005+00:00"),
        (1_453_018_507_000, "2016-01-17T08:15:07.000+00:00"),
        (0, "1970-01-01T00:00:00.000+00:00"),
        (-1, "1969-12-31T23:59:59.999+00:00"),
        (253_402_300_799_999, "9999-12-31T23:59:59.999+00:00"),
    ],
)
def test_timestamp_is_iso_8601_with_milliseconds_and_offset(millis: int, iso: str) -> None:
    context = SessionContext.create(timestamp=millis)
    assert Macros(context).expand("[TIMESTAMP]") == encode_uri_component(iso)


def test_timestamp_beyond_iso_8601_years_is_unknown() -> None:
    context = SessionContext.create(timestamp=253_402_300_800_000)
    assert Macros(context).expand("[TIMESTAMP]") == "-1"


def test_timestamp_can_be_unix_milliseconds() -> None:
    macros = Macros(CONTEXT, unix_timestamp=True)
    assert macros.expand("t=[TIMESTAMP]&u=%%TIMESTAMP%%") == "t=1453018507127&u=1453018507127"


def test_context_values_win_over_params() -> None:
    params = {"TIMESTAMP": "now", "CACHEBUSTING": "1", "CORRELATOR": "c"}
    expanded = Macros(CONTEXT, params).expand("[TIMESTAMP] [CACHEBUSTING] [CORRELATOR]")
    assert expanded == f"{ENCODED_TIMESTAMP} 12345678 {CONTEXT.correlator}"


def test_transaction_id_from_params_wins_over_the_correlator() -> None:
    assert Macros(CONTEXT, {"transaction_id": "t-1"}).expand("[TRANSACTIONID]") == "t-1"


# --- encoding -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (":/?#[]@", "%3A%2F%3F%23%5B%5D%40"),
        ("!$&'()*+,;=", "!%24%26'()*%2B%2C%3B%3D"),
        ("AZaz09-_.~", "AZaz09-_.~"),
        ("a b", "a%20b"),
        ("100%", "100%25"),
        ("é日本😀", "%C3%A9%E6%97%A5%E6%9C%AC%F0%9F%98%80"),
        ("", ""),
    ],
)
def test_values_are_encoded_like_encode_uri_component(value: str, encoded: str) -> None:
    assert Macros(CONTEXT, {"DOMAIN": value}).expand("[DOMAIN]") == encoded


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("video/mp4,application/x-mpegURL", "video%2Fmp4,application%2Fx-mpegURL"),
        ("a b,,c&d", "a%20b,,c%26d"),
        ("é", "%C3%A9"),
    ],
)
def test_array_items_are_encoded_one_by_one_and_joined_by_a_bare_comma(
    value: str, encoded: str
) -> None:
    assert Macros(CONTEXT, {"MEDIAMIME": value}).expand("[MEDIAMIME]") == encoded


@pytest.mark.parametrize("lone", ["\ud800", "a\udfffb"])
def test_a_lone_surrogate_is_encoded_as_the_replacement_character(lone: str) -> None:
    expected = encode_uri_component(
        lone.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    )
    assert "%EF%BF%BD" in expected
    assert Macros(CONTEXT, {"PAGEURL": lone}).expand("[PAGEURL]") == expected


def test_values_are_not_expanded_again() -> None:
    expanded = Macros(CONTEXT, {"DOMAIN": "[CACHEBUSTING]"}).expand("[DOMAIN]")
    assert expanded == "%5BCACHEBUSTING%5D"


@given(st.text())
def test_any_scalar_value_is_encoded_like_encode_uri_component(value: str) -> None:
    assert Macros(CONTEXT, {"PAGEURL": value}).expand("[PAGEURL]") == encode_uri_component(value)


@given(st.lists(st.text(st.characters(exclude_characters=",", exclude_categories=["Cs"]))))
def test_any_array_is_encoded_item_by_item(items: list[str]) -> None:
    expanded = Macros(CONTEXT, {"ADCATEGORIES": ",".join(items)}).expand("[ADCATEGORIES]")
    assert expanded == ",".join(map(encode_uri_component, items))


# --- params lookup ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["PAGEURL", "pageurl", "PageUrl", "page_url", "PAGE_URL"])
def test_params_key_names_a_macro_ignoring_case_and_underscores(key: str) -> None:
    assert Macros(CONTEXT, {key: "x"}).expand("[PAGEURL]") == "x"


def test_params_key_spelled_as_the_macro_wins_in_any_order() -> None:
    template = "[DEVICEUA]"
    assert Macros(CONTEXT, {"device_ua": "a", "DEVICEUA": "b"}).expand(template) == "b"
    assert Macros(CONTEXT, {"DEVICEUA": "b", "device_ua": "a"}).expand(template) == "b"


def test_first_of_several_other_spellings_wins() -> None:
    assert Macros(CONTEXT, {"device_ua": "a", "deviceUa": "b"}).expand("[DEVICEUA]") == "a"


def test_params_that_name_no_macro_fill_nothing() -> None:
    template = "[PAGE] [PAGEURL] [page_url]"
    assert Macros(CONTEXT, {"page": "p", "page_url": "u"}).expand(template) == "[PAGE] u [page_url]"


# --- what is left alone -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "[FOO]",
        "%%FOO%%",
        "[timestamp]",
        "%%Timestamp%%",
        "[TIME STAMP]",
        "[CACHE_BUSTING]",
        "[TIMESTAMP1]",
        "[TIMESTAMP%%",
        "%%TIMESTAMP]",
        "[ TIMESTAMP ]",
        "[]",
        "%%%%",
        "[0]",
    ],
)
def test_non_iab_tokens_are_left_exactly_as_they_are(token: str) -> None:
    template = f"https://ads.example/v?a={token}&b=[CACHEBUSTING]"
    assert Macros(CONTEXT).expand(template) == f"https://ads.example/v?a={token}&b=12345678"


@pytest.mark.parametrize("token", spellings("ERRORCODE"))
def test_errorcode_is_substituted_only_with_an_error_code(token: str) -> None:
    macros = Macros(CONTEXT, {"ERRORCODE": "999"})
    assert macros.expand(f"e={token}") == f"e={token}"
    assert macros.expand(f"e={token}", error_code=303) == "e=303"
    assert macros.expand(f"e={token}") == f"e={token}"


def test_text_without_macros_is_returned_as_is() -> None:
    url = "https://ads.example/vast?a=1&b=%20%25"
    assert Macros(CONTEXT, {"DOMAIN": "x"}).expand(url) == url


# --- cache keys ---------------------------------------------------------------------------------


def test_per_request_macros_include_the_context_values() -> None:
    assert {"TIMESTAMP", "CACHEBUSTING", "CORRELATOR"} <= PER_REQUEST_MACROS


def test_cache_key_template_blanks_per_request_macros_only() -> None:
    template = "u?t=[TIMESTAMP]&cb=%%CACHEBUSTING%%&c=[CORRELATOR]&d=[DOMAIN]&x=[FOO]&e=[ERRORCODE]"
    assert cache_key_template(template) == "u?t=&cb=&c=&d=[DOMAIN]&x=[FOO]&e=[ERRORCODE]"


def test_cache_keys_of_two_requests_agree_where_their_urls_do_not() -> None:
    template = (
        "https://ads.example/v?t=[TIMESTAMP]&cb=[CACHEBUSTING]&tid=[TRANSACTIONID]&d=[DOMAIN]"
    )
    params = {"domain": "news.example"}
    first = Macros(SessionContext.create(timestamp=1), params)
    second = Macros(SessionContext.create(timestamp=2), params)
    assert first.expand(template) != second.expand(template)
    key = cache_key_template(template)
    assert (
        first.expand(key)
        == second.expand(key)
        == "https://ads.example/v?t=&cb=&tid=&d=news.example"
    )


# --- properties ---------------------------------------------------------------------------------

KNOWN = sorted(IAB_MACROS | {"CORRELATOR"})
PARAMS = {name: f"v {name}/é" for name in FROM_PARAMS}


@given(st.text(), st.one_of(st.none(), st.integers()))
def test_any_template_expands_without_raising(template: str, error_code: int | None) -> None:
    expanded = Macros(CONTEXT, PARAMS).expand(template, error_code=error_code)
    if not any(name in template for name in KNOWN):
        assert expanded == template


@given(st.text(st.characters(exclude_characters="[%")))
def test_text_without_macro_delimiters_is_untouched(text: str) -> None:
    assert Macros(CONTEXT, PARAMS).expand(text) == text
    assert cache_key_template(text) == text


LITERAL = st.text(st.characters(exclude_characters="[%"))
TOKEN = st.tuples(st.sampled_from(KNOWN), st.sampled_from([0, 1]))


@given(
    st.lists(st.one_of(LITERAL, TOKEN)),
    st.one_of(st.none(), st.integers(min_value=100, max_value=999)),
)
def test_templates_expand_piece_by_piece(
    pieces: list[str | tuple[str, int]], error_code: int | None
) -> None:
    """Literal text and macros in any order: each piece expands on its own, nothing leaks."""

    def template_of(piece: str | tuple[str, int]) -> str:
        return piece if isinstance(piece, str) else spellings(piece[0])[piece[1]]

    def expected(piece: str | tuple[str, int]) -> str:
        if isinstance(piece, str):
            return piece
        name = piece[0]
        if name == "ERRORCODE":
            return template_of(piece) if error_code is None else str(error_code)
        return FROM_CONTEXT.get(name) or encode_uri_component(PARAMS[name])

    template = "".join(map(template_of, pieces))
    expanded = Macros(CONTEXT, PARAMS).expand(template, error_code=error_code)
    assert expanded == "".join(map(expected, pieces))
