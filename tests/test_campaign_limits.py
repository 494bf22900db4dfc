"""Campaign values: whatever `decode_campaign` accepts, the worker's state holds, and what it
cannot hold (or does not know) is refused by name, for `campaigns load` and the worker alike."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.codec import MAX_RECORD_BYTES, MAX_TIMESTAMP_MS, InvalidEvent, decode_campaign
from models.events import (
    MAX_BUDGET_MICROS,
    MAX_CAP_IMPRESSIONS,
    MAX_CAP_WINDOW_S,
    MAX_CAPS,
    MAX_CPM_MICROS,
)
from models.money import from_micros
from streams.billing.ledger import MAX_CHARGE_MICROS
from streams.lookaside import SpendView
from streams.state.campaigns import CampaignRules
from streams.state.frequency import MAX_KEPT_IMPRESSIONS, Impressions, kept_count
from streams.state.spend import Spend, exceeded_budget, utc_day
from streams.worker.tables import CapEntry

INT64_MAX = 2**63 - 1
LAST_MS = MAX_TIMESTAMP_MS - 1


def campaign(**overrides: Any) -> bytes:
    value: dict[str, Any] = {
        "schema": 1,
        "campaign_id": "c-1",
        "active": True,
        "vast_url": "https://ads.example.com/vast",
        "cpm": "2.50",
        "currency": "EUR",
    }
    value.update(overrides)
    return json.dumps(value).encode()


def refusal(data: bytes) -> str:
    with pytest.raises(InvalidEvent) as caught:
        decode_campaign(data)
    assert caught.value.reason == "invalid"
    return caught.value.detail


# Amounts around each limit, in micros: valid ones at and under it, invalid ones above.
def amounts(limit: int, places: int) -> st.SearchStrategy[str]:
    step = 10 ** (6 - places)
    near = st.integers(min_value=max(0, limit - 3 * step), max_value=limit + 3 * step)
    micros = st.one_of(near, st.integers(0, limit), st.integers(limit, 10**21 - 1))
    return micros.map(lambda m: from_micros(m - m % step))


@settings(max_examples=300, deadline=None)
@given(
    cpm=amounts(MAX_CPM_MICROS, places=3),
    lifetime=st.none() | amounts(MAX_BUDGET_MICROS, places=6),
    daily=st.none() | amounts(MAX_BUDGET_MICROS, places=6),
    cap_max=st.integers(1, 10**20),
    window_s=st.integers(1, 10**12),
)
def test_state_holds_every_campaign_the_codec_accepts(
    cpm: str, lifetime: str | None, daily: str | None, cap_max: int, window_s: int
) -> None:
    data = campaign(
        cpm=cpm,
        budget={"lifetime": lifetime, "daily": daily},
        frequency_caps=[{"max": cap_max, "window_s": window_s}],
    )
    try:
        accepted = decode_campaign(data)
    except InvalidEvent as exc:
        assert exc.reason == "invalid"
        return
    rules = CampaignRules.from_campaign(accepted, version=INT64_MAX)
    encoder = msgspec.msgpack.Encoder()
    encoder.encode(rules)  # the campaigns table
    assert rules.cost_micros <= MAX_CHARGE_MICROS  # the billing ledger takes every charge
    # Spend at its largest: each budget spent to the micro, a batch pending as much again,
    # and one more impression checked against it.
    lifetime_limit, daily_limit = rules.lifetime_micros, rules.daily_micros
    spent = lifetime_limit if lifetime_limit is not None else MAX_BUDGET_MICROS
    day = utc_day(LAST_MS)
    spend = Spend(lifetime=spent, daily={day: daily_limit or 0}, oldest_day=day)
    exceeded_budget(
        spend, rules.cost_micros, LAST_MS, lifetime_limit, daily_limit, spent, daily_limit or 0
    )
    assert spent * 2 + rules.cost_micros <= INT64_MAX
    encoder.encode(spend)
    encoder.encode(
        SpendView(spent, spend.daily, day, rules.cost_micros, lifetime_limit, daily_limit)
    )


def test_the_longest_impression_list_fits_a_changelog_record() -> None:
    rules = CampaignRules.from_campaign(
        decode_campaign(
            campaign(frequency_caps=[{"max": MAX_CAP_IMPRESSIONS, "window_s": MAX_CAP_WINDOW_S}])
        ),
        version=0,
    )
    assert MAX_CAP_IMPRESSIONS <= MAX_KEPT_IMPRESSIONS
    count = kept_count(rules.caps)
    times = list(range(LAST_MS - count, LAST_MS))
    record = msgspec.msgpack.encode(CapEntry(Impressions(times, LAST_MS - count - 1), 2**31))
    assert len(record) < MAX_RECORD_BYTES // 4


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"budget": {"lifetime": "999999999999999.00"}}, "budget.lifetime"),
        ({"budget": {"daily": from_micros(MAX_BUDGET_MICROS + 1)}}, "budget.daily"),
        ({"cpm": from_micros(MAX_CPM_MICROS + 1000)}, "cpm"),
        ({"frequency_caps": [{"max": MAX_CAP_IMPRESSIONS + 1, "window_s": 60}]}, "max"),
        ({"frequency_caps": [{"max": 10**30, "window_s": 60}]}, "max"),
        ({"frequency_caps": [{"max": 1, "window_s": MAX_CAP_WINDOW_S + 1}]}, "window_s"),
        ({"frequency_caps": [{"max": 1, "window_s": 60}] * (MAX_CAPS + 1)}, "frequency_caps"),
    ],
)
def test_values_beyond_the_limits_are_refused_by_field(
    overrides: dict[str, Any], named: str
) -> None:
    assert named in refusal(campaign(**overrides))


def test_values_at_the_limits_are_accepted() -> None:
    limits = decode_campaign(
        campaign(
            cpm=from_micros(MAX_CPM_MICROS),
            budget={"lifetime": from_micros(MAX_BUDGET_MICROS), "daily": "1000000000000"},
            frequency_caps=[{"max": MAX_CAP_IMPRESSIONS, "window_s": MAX_CAP_WINDOW_S}] * MAX_CAPS,
        )
    )
    assert limits.budget.lifetime == "1000000000000.00"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"bugdet": {"lifetime": "10"}}, "unknown field 'bugdet': did you mean 'budget'?"),
        (
            {"budget": {"lifetme": "10"}},
            "unknown field 'lifetme' in budget: did you mean 'lifetime'?",
        ),
        (
            {"frequency_caps": [{"max": 1, "window_s": 60}, {"max": 1, "windows": 60}]},
            "unknown field 'windows' in frequency_caps[1]: did you mean 'window_s'?",
        ),
        ({"frequency_cap": []}, "did you mean 'frequency_caps'?"),
        ({"zzz": 1}, "unknown field 'zzz': known fields: schema, campaign_id, active,"),
    ],
)
def test_unknown_fields_are_refused_with_the_closest_known_one(
    overrides: dict[str, Any], expected: str
) -> None:
    assert expected in refusal(campaign(**overrides))


def test_a_newer_schema_with_new_fields_is_a_schema_version_not_an_unknown_field() -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode_campaign(campaign(schema=2, pacing="even"))
    assert caught.value.reason == "schema_version"
