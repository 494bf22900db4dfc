"""The pure part of `adstream tail`: --from, the filter, and how a record reads."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.codec import encode
from streams.tail import DEAD_LETTER, TailFilter, as_row, iso_ms, line_of, parse_since
from tests.pipeline.harness import BASE_MS, request

NOW_MS = 1_800_000_000_000


@given(st.integers(0, 10_000), st.sampled_from([("s", 1000), ("m", 60_000), ("h", 3_600_000)]))
def test_a_time_ago_counts_back_from_now(amount: int, unit: tuple[str, int]) -> None:
    name, ms = unit
    assert parse_since(f"{amount}{name}", NOW_MS) == NOW_MS - amount * ms


def test_absolute_times_and_bad_ones() -> None:
    assert parse_since("1d", NOW_MS) == NOW_MS - 86_400_000
    assert parse_since("2026-11-27T12:00:00Z", NOW_MS) == 1_795_780_800_000
    assert parse_since("2026-11-27T13:00:00+01:00", NOW_MS) == 1_795_780_800_000
    assert parse_since("1795780800000", NOW_MS) == 1_795_780_800_000
    assert iso_ms(1_795_780_800_123) == "2026-11-27T12:00:00.123Z"
    for bad in ("10 minutes", "-5m", "yesterday", "10w"):
        with pytest.raises(ValueError, match="neither a time ago"):
            parse_since(bad, NOW_MS)


def decision(**fields: object) -> dict[str, object]:
    event: dict[str, object] = {
        "request_id": "req-1",
        "correlator": "c",
        "campaign_id": "camp",
        "user_id": "user-1",
        "timestamp": BASE_MS,
        "reason": "frequency_cap",
        "detail": "3 per 3600 s",
    }
    return {**event, **fields}


def test_each_filter_keeps_only_its_values_and_empty_ones_keep_all() -> None:
    line = line_of("denied", 0, 7, BASE_MS, decision())
    assert TailFilter().keeps(line)
    assert TailFilter(campaigns=frozenset({"camp", "other"})).keeps(line)
    assert not TailFilter(campaigns=frozenset({"other"})).keeps(line)
    assert not TailFilter(users=frozenset({"user-2"})).keeps(line)
    assert TailFilter(
        request_ids=frozenset({"req-1"}), outcomes=frozenset({"frequency_cap"})
    ).keeps(line)
    assert not TailFilter(outcomes=frozenset({"served"})).keeps(line)
    assert TailFilter(since_ms=BASE_MS).keeps(line)
    assert not TailFilter(since_ms=BASE_MS + 1).keeps(line)
    anonymous = line_of("denied", 0, 8, BASE_MS, decision(user_id=None, reason="anonymous"))
    assert not TailFilter(users=frozenset({"user-1"})).keeps(anonymous)


def test_how_each_kind_of_record_reads() -> None:
    served = line_of(
        "served", 1, 2, BASE_MS, decision(cost="0.0025", currency="EUR", campaign_version=4)
    )
    assert (served.outcome, served.detail) == ("served", "0.0025 EUR, v4")
    row = as_row(served).split()
    assert row[2:6] == ["served", "camp", "user-1", "req-1"]
    original = request("camp-x", BASE_MS, "user-9")
    letter = {"value": base64.b64encode(encode(original)).decode(), "error": "invalid: cpm"}
    dead = line_of("dlq", 0, 0, BASE_MS, letter)
    assert dead.outcome == DEAD_LETTER and dead.detail == "invalid: cpm"
    assert (dead.request_id, dead.campaign_id, dead.user_id) == (
        original.context.request_id,
        "camp-x",
        "user-9",
    )
    opaque = line_of("dlq", 0, 1, BASE_MS, {"value": base64.b64encode(b"\xff").decode()})
    assert (opaque.request_id, opaque.campaign_id) == (None, None)
    assert as_row(opaque).split()[3:6] == ["-", "-", "-"]
