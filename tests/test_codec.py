"""`models.codec`: one JSON codec; every bad message is an `InvalidEvent` with a stable reason."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.ad import Creative, Hop, MediaFile, ServedAd, Tracking
from models.codec import (
    MAX_COOKIE_BYTES,
    MAX_COOKIES,
    MAX_EVENT_BYTES,
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
    InvalidEvent,
    decode,
    decode_campaign,
    decode_request,
    encode,
)
from models.context import SessionContext
from models.events import (
    SCHEMA_VERSION,
    AdDenied,
    AdRequest,
    AdServed,
    Budget,
    Campaign,
    DeadLetter,
    FrequencyCap,
)

T0 = 1_700_000_000_000


def request_dict(**overrides: Any) -> dict[str, Any]:
    context = SessionContext.create({"user_id": "u-1"}, timestamp=T0)
    value: dict[str, Any] = {
        "schema": 1,
        "context": msgspec.to_builtins(context),
        "campaign_id": "c-1",
        "placement_id": "p-1",
        "params": {"site": "example.com"},
    }
    value.update(overrides)
    return value


def campaign_dict(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "schema": 1,
        "campaign_id": "c-1",
        "active": True,
        "vast_url": "https://ads.example.com/vast?cb=[CACHEBUSTING]",
        "cpm": "2.50",
        "currency": "EUR",
        "budget": {"lifetime": "1000.00", "daily": "100"},
        "frequency_caps": [{"max": 3, "window_s": 3600}],
        "anonymous_policy": "deny",
    }
    value.update(overrides)
    return value


def as_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


def reason_of(fn: Any, data: bytes) -> str:
    with pytest.raises(InvalidEvent) as caught:
        fn(data)
    assert caught.value.detail
    assert str(caught.value).startswith(f"{caught.value.reason}: ")
    return caught.value.reason


# -- valid messages ----------------------------------------------------------------------------


def test_a_valid_request_decodes_to_its_struct() -> None:
    value = request_dict()
    request = decode_request(as_bytes(value))
    assert isinstance(request, AdRequest)
    assert request.context.timestamp == T0
    assert request.context.cookies == {"user_id": "u-1"}
    assert request.context.request_id == value["context"]["request_id"]
    assert request.params == {"site": "example.com"}


def test_request_round_trip() -> None:
    request = AdRequest(
        schema=SCHEMA_VERSION,
        context=SessionContext.create({"user_id": "ü-✓", "gdpr": "1"}, timestamp=T0),
        campaign_id="c-1",
        placement_id="p-1",
        params={"a": "b", "ünï": 'ç"\\\n'},
    )
    assert decode_request(encode(request)) == request


def test_params_are_optional() -> None:
    value = request_dict()
    del value["params"]
    assert decode_request(as_bytes(value)).params == {}


def test_campaign_round_trip_and_defaults() -> None:
    campaign = Campaign(
        schema=1,
        campaign_id="c-1",
        active=False,
        vast_url="http://ads.example.com/vast",
        cpm="0.001",
        currency="USD",
        budget=Budget(lifetime="10.123456", daily=None),
        frequency_caps=(FrequencyCap(max=1, window_s=60), FrequencyCap(max=5, window_s=86_400)),
        anonymous_policy="uncapped",
    )
    assert decode_campaign(encode(campaign)) == campaign
    minimal = campaign_dict()
    for field in ("budget", "frequency_caps", "anonymous_policy"):
        del minimal[field]
    decoded = decode_campaign(as_bytes(minimal))
    assert decoded.budget == Budget(lifetime=None, daily=None)
    assert decoded.frequency_caps == ()
    assert decoded.anonymous_policy == "deny"


def test_money_travels_as_strings_never_floats() -> None:
    wire = json.loads(encode(msgspec.convert(campaign_dict(), Campaign)))
    assert wire["cpm"] == "2.50"
    assert wire["budget"] == {"lifetime": "1000.00", "daily": "100"}


def test_decisions_and_dead_letters_round_trip() -> None:
    ad = ServedAd(
        id="ad-1",
        sequence=None,
        ad_system="sys",
        ad_title=None,
        impressions=("https://t.example/imp?ts=2023-11-14T22%3A13%3A20.000%2B00%3A00",),
        errors=("https://t.example/err?code=[ERRORCODE]",),
        creatives=(
            Creative(
                kind="linear",
                duration="00:00:15",
                media_files=(MediaFile(url="https://cdn.example/a.mp4", width=640, height=360),),
                tracking=(Tracking(event="progress", url="https://t.example/p", offset="25%"),),
            ),
        ),
        wrappers=1,
    )
    served = AdServed(
        schema=1,
        request_id="req-1",
        correlator="corr",
        campaign_id="c-1",
        placement_id="p-1",
        user_id=None,
        timestamp=T0,
        cost="0.0025",
        currency="EUR",
        ad=ad,
        vast="<VAST version='4.2'/>",
        chain=(
            Hop(url="https://a", status=200, ms=1.5),
            Hop(url="https://b", status=0, ms=2.0, attempts=2),
        ),
        campaign_version=7,
    )
    denied = AdDenied(
        schema=1,
        request_id="req-2",
        correlator="corr",
        campaign_id="c-1",
        placement_id="p-1",
        user_id="u-1",
        timestamp=T0,
        reason="frequency_cap",
        detail="3/3600s",
        campaign_version=None,
    )
    letter = DeadLetter(
        schema=1,
        key=None,
        value="AAE=",
        topic="ad-requests",
        partition=3,
        offset=42,
        error="undecodable: ...",
    )
    assert decode(encode(served), AdServed) == served
    assert decode(encode(denied), AdDenied) == denied
    assert decode(encode(letter), DeadLetter) == letter


# -- oversize ----------------------------------------------------------------------------------


def padded_request(total_bytes: int) -> bytes:
    value = request_dict(params={"pad": ""})
    base = len(as_bytes(value))
    value["params"]["pad"] = "x" * (total_bytes - base)
    data = as_bytes(value)
    assert len(data) == total_bytes
    return data


def test_a_request_of_exactly_64_kib_is_accepted() -> None:
    assert MAX_EVENT_BYTES == 64 * 1024
    request = decode_request(padded_request(MAX_EVENT_BYTES))
    assert len(request.params["pad"]) > 60_000


def test_one_byte_more_is_oversize() -> None:
    assert reason_of(decode_request, padded_request(MAX_EVENT_BYTES + 1)) == "oversize"


def test_the_size_cap_can_be_lifted_for_the_workers_own_outputs() -> None:
    big = padded_request(4 * MAX_EVENT_BYTES)
    assert len(decode(big, AdRequest, max_bytes=None).params["pad"]) > 3 * MAX_EVENT_BYTES
    assert reason_of(lambda data: decode(data, AdRequest), big) == "oversize"


def test_oversize_is_checked_before_anything_else() -> None:
    junk = b"\xff" * (MAX_EVENT_BYTES + 1)
    assert reason_of(decode_request, junk) == "oversize"
    assert reason_of(decode_campaign, junk) == "oversize"
    schema_2 = as_bytes(campaign_dict(schema=2, vast_url="https://" + "a" * MAX_EVENT_BYTES))
    assert reason_of(decode_campaign, schema_2) == "oversize"


# -- undecodable -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"{",
        b'{"schema": 1',
        b"\xff\xfe",
        b'{"schema": 1, "campaign_id": "c"]',
        b"{'a': 1}",
    ],
)
def test_not_json_is_undecodable(data: bytes) -> None:
    assert reason_of(decode_request, data) == "undecodable"
    assert reason_of(decode_campaign, data) == "undecodable"


def test_deep_nesting_is_refused_not_a_crash() -> None:
    # ~10 KB of brackets in an unknown field: msgspec skips it recursively.
    nested = b"[" * 5000 + b"]" * 5000
    for schema in (1, 2):
        data = b'{"schema": %d, "extra": %s}' % (schema, nested)
        assert len(data) < MAX_EVENT_BYTES
        assert reason_of(decode_request, data) in {"undecodable", "invalid"}
        assert reason_of(decode_campaign, data) in {"undecodable", "invalid"}


# -- invalid -----------------------------------------------------------------------------------


def without(value: dict[str, Any], *path: str) -> dict[str, Any]:
    target = value
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return value


@pytest.mark.parametrize(
    "value",
    [
        request_dict(schema="1"),
        request_dict(schema=1.5),
        request_dict(campaign_id=7),
        request_dict(campaign_id=""),
        request_dict(placement_id="p" * 257),
        request_dict(params={"a": 1}),
        request_dict(params={f"k{i}": "v" for i in range(257)}),
        request_dict(context="ctx"),
        request_dict(context={**request_dict()["context"], "timestamp": "1700000000000"}),
        request_dict(context={**request_dict()["context"], "timestamp": 1.7e12}),
        request_dict(context={**request_dict()["context"], "cookies": {"a": 1}}),
        request_dict(context={**request_dict()["context"], "cookies": ["a"]}),
        without(request_dict(), "schema"),
        without(request_dict(), "campaign_id"),
        without(request_dict(), "context"),
        without(request_dict(), "context", "timestamp"),
        without(request_dict(), "context", "request_id"),
        without(request_dict(), "context", "cookies"),
        [request_dict()],
        "just a string",
        None,
    ],
)
def test_wrong_types_and_missing_fields_are_invalid(value: Any) -> None:
    assert reason_of(decode_request, as_bytes(value)) == "invalid"


def test_an_empty_request_id_is_invalid() -> None:
    value = request_dict()
    value["context"]["request_id"] = ""
    assert reason_of(decode_request, as_bytes(value)) == "invalid"


@pytest.mark.parametrize(
    ("timestamp", "valid"),
    [
        (MIN_TIMESTAMP_MS - 1, False),
        (MIN_TIMESTAMP_MS, True),
        (MAX_TIMESTAMP_MS - 1, True),
        (MAX_TIMESTAMP_MS, False),
        (1_700_000_000, False),  # seconds, not ms
        (1_700_000_000_000_000, False),  # us
        (0, False),
        (-1, False),
    ],
)
def test_event_time_must_be_unix_ms_in_2000_to_2099(timestamp: int, valid: bool) -> None:
    assert MIN_TIMESTAMP_MS == 946_684_800_000  # 2000-01-01T00:00:00Z
    assert MAX_TIMESTAMP_MS == 4_102_444_800_000  # 2100-01-01T00:00:00Z
    value = request_dict()
    value["context"]["timestamp"] = timestamp
    if valid:
        assert decode_request(as_bytes(value)).context.timestamp == timestamp
    else:
        assert reason_of(decode_request, as_bytes(value)) == "invalid"


def with_cookies(cookies: dict[str, str]) -> bytes:
    value = request_dict()
    value["context"]["cookies"] = cookies
    return as_bytes(value)


def test_cookie_count_limit() -> None:
    cookies = {f"c{i}": "v" for i in range(MAX_COOKIES)}
    assert len(decode_request(with_cookies(cookies)).context.cookies) == MAX_COOKIES
    cookies["one_more"] = "v"
    assert reason_of(decode_request, with_cookies(cookies)) == "invalid"


def test_cookie_size_limit_counts_name_and_value() -> None:
    name = "user_id"
    fits = {name: "v" * (MAX_COOKIE_BYTES - len(name))}
    assert decode_request(with_cookies(fits)).context.cookies == fits
    huge = {name: "v" * (MAX_COOKIE_BYTES - len(name) + 1)}
    assert reason_of(decode_request, with_cookies(huge)) == "invalid"
    huge_name = {"n" * (MAX_COOKIE_BYTES + 1): ""}
    assert reason_of(decode_request, with_cookies(huge_name)) == "invalid"


@pytest.mark.parametrize(
    "overrides",
    [
        {"cpm": "2.5001"},  # 4 places: an impression would not be whole micros
        {"cpm": "1e3"},
        {"cpm": "-1.00"},
        {"cpm": "NaN"},
        {"cpm": 2.5},
        {"cpm": ""},
        {"budget": {"lifetime": "-1", "daily": None}},
        {"budget": {"lifetime": "1e3", "daily": None}},
        {"budget": {"lifetime": None, "daily": "1.0000001"}},
        {"budget": {"lifetime": None, "daily": "Infinity"}},
        {"budget": {"lifetime": 100, "daily": None}},
        {"vast_url": "ftp://ads.example.com/vast"},
        {"vast_url": "javascript:alert(1)"},
        {"vast_url": "file:///etc/passwd"},
        {"vast_url": "//ads.example.com/vast"},
        {"vast_url": " https://ads.example.com/vast"},
        {"vast_url": ""},
        {"currency": "eur"},
        {"currency": "EURO"},
        {"currency": "EUR\n"},
        {"active": "true"},
        {"anonymous_policy": "allow"},
        {"frequency_caps": [{"max": 0, "window_s": 60}]},
        {"frequency_caps": [{"max": 1, "window_s": 0}]},
        {"frequency_caps": [{"max": 1, "window_s": 400 * 86_400 + 1}]},
        {"frequency_caps": [{"max": 1}]},
        {"campaign_id": ""},
    ],
)
def test_invalid_campaigns(overrides: dict[str, Any]) -> None:
    assert reason_of(decode_campaign, as_bytes(campaign_dict(**overrides))) == "invalid"


@pytest.mark.parametrize("cpm", ["0", "0.001", "2.5", "2.50", "2.500", "100000"])
def test_valid_cpms(cpm: str) -> None:
    assert decode_campaign(as_bytes(campaign_dict(cpm=cpm))).cpm == cpm


def test_budgets_may_have_six_places() -> None:
    budget = {"lifetime": "0.000001", "daily": "12.345678"}
    assert decode_campaign(as_bytes(campaign_dict(budget=budget))).budget == Budget(**budget)


def test_an_invalid_campaign_message_names_the_field() -> None:
    with pytest.raises(InvalidEvent, match="more than 3 decimal places"):
        decode_campaign(as_bytes(campaign_dict(cpm="2.5001")))
    with pytest.raises(InvalidEvent, match="vast_url"):
        decode_campaign(as_bytes(campaign_dict(vast_url="gopher://x")))


# -- schema_version ----------------------------------------------------------------------------


@pytest.mark.parametrize("schema", [0, 2, 99, -1])
def test_other_schema_versions(schema: int) -> None:
    assert reason_of(decode_request, as_bytes(request_dict(schema=schema))) == "schema_version"
    assert reason_of(decode_campaign, as_bytes(campaign_dict(schema=schema))) == "schema_version"


def test_schema_2_wins_even_when_other_fields_differ() -> None:
    newer_request = {"schema": 2, "ctx": {"ts": "now"}, "campaign_id": 5}
    assert reason_of(decode_request, as_bytes(newer_request)) == "schema_version"
    newer_campaign = campaign_dict(schema=2, cpm=2.5, budget="lots")
    del newer_campaign["vast_url"]
    assert reason_of(decode_campaign, as_bytes(newer_campaign)) == "schema_version"


def test_schema_1_with_bad_fields_stays_invalid() -> None:
    assert reason_of(decode_request, as_bytes({"schema": 1, "ctx": {}})) == "invalid"
    assert reason_of(decode_request, as_bytes({"ctx": {}})) == "invalid"


def test_schema_version_is_checked_before_the_campaign_rules() -> None:
    data = as_bytes(campaign_dict(schema=2, cpm="2.5001", vast_url="ftp://x"))
    assert reason_of(decode_campaign, data) == "schema_version"


# -- nothing but InvalidEvent ------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_nothing_but_invalid_event(data: bytes) -> None:
    for fn in (decode_request, decode_campaign):
        try:
            fn(data)
        except InvalidEvent as exc:
            assert exc.reason in {"undecodable", "invalid", "schema_version"}


def mutate(base: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    target: Any = base
    for key in path[:-1]:
        target = target[key] if isinstance(target, dict) and key in target else {}
    if isinstance(target, dict):
        target[path[-1]] = value
    return base


request_paths = st.sampled_from(
    [
        ["schema"],
        ["campaign_id"],
        ["placement_id"],
        ["params"],
        ["context"],
        ["context", "timestamp"],
        ["context", "request_id"],
        ["context", "cookies"],
        ["context", "correlator"],
        ["extra"],
    ]
)
campaign_paths = st.sampled_from(
    [
        ["schema"],
        ["cpm"],
        ["vast_url"],
        ["currency"],
        ["active"],
        ["budget"],
        ["budget", "lifetime"],
        ["budget", "daily"],
        ["frequency_caps"],
        ["anonymous_policy"],
    ]
)


@settings(max_examples=300)
@given(request_paths, campaign_paths, json_values)
def test_near_valid_messages_raise_nothing_but_invalid_event(
    request_path: list[str], campaign_path: list[str], value: Any
) -> None:
    for fn, data in (
        (decode_request, as_bytes(mutate(request_dict(), request_path, value))),
        (decode_campaign, as_bytes(mutate(campaign_dict(), campaign_path, value))),
    ):
        try:
            fn(data)
        except InvalidEvent as exc:
            assert exc.reason in {"invalid", "schema_version"}


@given(
    st.integers(min_value=MIN_TIMESTAMP_MS, max_value=MAX_TIMESTAMP_MS - 1),
    st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=MAX_COOKIES),
    st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=10),
)
def test_valid_requests_round_trip(
    timestamp: int, cookies: dict[str, str], params: dict[str, str]
) -> None:
    request = AdRequest(
        schema=1,
        context=SessionContext.create(cookies, timestamp=timestamp),
        campaign_id="c",
        placement_id="p",
        params=params,
    )
    assert decode_request(encode(request)) == request


# -- refused at the boundary: invalid UTF-8 and duplicate keys ---------------------------------


def test_invalid_utf8_inside_a_string_is_undecodable() -> None:
    data = json.dumps(request_dict()).encode().replace(b'"p-1"', b'"p-1\xff"')
    with pytest.raises(InvalidEvent) as caught:
        decode_request(data)
    assert caught.value.reason == "undecodable"
    assert "UTF-8" in caught.value.detail


@pytest.mark.parametrize(
    ("first", "twice"),
    [
        (b'"campaign_id": "c-1"', b'"campaign_id": "c-0", "campaign_id": "c-1"'),
        (b'"user_id": "u-1"', b'"user_id": "u-0", "user_id": "u-1"'),
        (b'"site": "example.com"', b'"site": "a", "site": "example.com"'),
    ],
)
def test_a_key_given_twice_in_any_object_is_invalid(first: bytes, twice: bytes) -> None:
    data = json.dumps(request_dict()).encode()
    assert first in data
    decode_request(data)  # once is fine
    with pytest.raises(InvalidEvent) as caught:
        decode_request(data.replace(first, twice))
    assert caught.value.reason == "invalid"
    assert "appears twice" in caught.value.detail


def test_a_campaign_with_a_key_given_twice_is_invalid() -> None:
    data = json.dumps(campaign_dict()).encode().replace(b'"cpm":', b'"cpm": "0.01", "cpm":')
    with pytest.raises(InvalidEvent, match="'cpm' appears twice"):
        decode_campaign(data)
