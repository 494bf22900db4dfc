"""`models.context`: what `SessionContext.create` generates and the design's anonymous rules."""

from __future__ import annotations

import random
import re
import time
import uuid

import msgspec
import pytest

from models import SessionContext, user_id_of, user_key

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_create_stamps_the_wall_clock_in_unix_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    context = SessionContext.create()
    after = time.time_ns() // 1_000_000
    assert before <= context.timestamp <= after


def test_create_keeps_a_given_event_time() -> None:
    assert SessionContext.create(timestamp=1_453_018_507_127).timestamp == 1_453_018_507_127


def test_create_generates_uuid4_correlator_and_request_id() -> None:
    context = SessionContext.create()
    assert UUID4.fullmatch(context.correlator)
    assert context.request_id.startswith("req-")
    assert UUID4.fullmatch(context.request_id.removeprefix("req-"))
    assert uuid.UUID(context.correlator) != uuid.UUID(context.request_id.removeprefix("req-"))


def test_cachebusting_is_an_eight_digit_integer() -> None:
    # Many draws, so that a generator allowing a leading zero (1 in 10) fails here.
    busters = [SessionContext.create().cachebusting for _ in range(200)]
    assert all(re.fullmatch(r"[1-9][0-9]{7}", buster) for buster in busters)


def test_every_context_is_fresh() -> None:
    first, second = SessionContext.create(), SessionContext.create()
    assert first.correlator != second.correlator
    assert first.request_id != second.request_id


def test_cookies_default_to_empty_and_are_copied() -> None:
    assert SessionContext.create().cookies == {}
    cookies = {"user_id": "u-1"}
    context = SessionContext.create(cookies)
    cookies["user_id"] = "u-2"
    assert context.cookies == {"user_id": "u-1"}


def test_context_is_frozen() -> None:
    context = SessionContext.create()
    with pytest.raises(AttributeError):
        context.timestamp = 0  # type: ignore[misc]


def test_wire_form_has_exactly_the_contract_fields_and_round_trips() -> None:
    context = SessionContext.create({"user_id": "u-1"}, timestamp=5)
    wire = msgspec.json.decode(msgspec.json.encode(context))
    assert set(wire) == {"timestamp", "correlator", "cachebusting", "request_id", "cookies"}
    assert msgspec.json.decode(msgspec.json.encode(context), type=SessionContext) == context


@pytest.mark.parametrize(
    ("cookies", "expected"),
    [
        ({"user_id": "u-1"}, "u-1"),
        ({}, None),
        ({"other": "u-1"}, None),
        ({"user_id": ""}, None),
        ({"user_id": "anonymous"}, None),
        ({"user_id": "Anonymous"}, "Anonymous"),
        ({"user_id": "u-1", "gdpr": "1"}, None),
        ({"user_id": "u-1", "gdpr": "1", "gdpr_consent": "0"}, None),
        ({"user_id": "u-1", "gdpr": "1", "gdpr_consent": "1"}, "u-1"),
        ({"user_id": "u-1", "gdpr": "0"}, "u-1"),
        ({"user_id": "u-1", "gdpr_consent": "0"}, "u-1"),
        ({"user_id": "anonymous", "gdpr": "1", "gdpr_consent": "1"}, None),
    ],
)
def test_user_id_follows_the_anonymous_rules(cookies: dict[str, str], expected: str | None) -> None:
    assert user_id_of(SessionContext.create(cookies)) == expected


def test_known_users_are_keyed_by_user_id() -> None:
    assert user_key(SessionContext.create({"user_id": "u-1"})) == "u-1"


@pytest.mark.parametrize("cookies", [{}, {"user_id": "anonymous"}, {"user_id": "u-1", "gdpr": "1"}])
def test_anonymous_users_are_keyed_by_request_id(cookies: dict[str, str]) -> None:
    context = SessionContext.create(cookies)
    assert user_key(context) == context.request_id


def test_a_seeded_rng_makes_contexts_reproducible() -> None:
    first = [SessionContext.create(timestamp=1, rng=random.Random(5)) for _ in range(2)]
    assert first[0] == first[1]
    context = first[0]
    assert UUID4.fullmatch(context.correlator)
    assert UUID4.fullmatch(context.request_id.removeprefix("req-"))
    assert re.fullmatch(r"[1-9][0-9]{7}", context.cachebusting)
    assert SessionContext.create(timestamp=1, rng=random.Random(6)) != context
