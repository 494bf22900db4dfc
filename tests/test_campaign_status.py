"""The pure part of `adstream campaigns list|show`: the rules in force and spend in micros."""

from __future__ import annotations

import time

import msgspec

from models.codec import encode
from streams.campaign_status import CampaignsInForce, SpendTally, statuses
from streams.state.spend import MS_PER_DAY
from tests.pipeline.harness import BASE_MS, campaign

NOW_MS = BASE_MS + 10 * MS_PER_DAY + 5_000


def served(campaign_id: str, cost: str, at_ms: int) -> bytes:
    return msgspec.json.encode({"campaign_id": campaign_id, "cost": cost, "timestamp": at_ms})


def test_the_latest_valid_record_is_in_force_and_a_tombstone_deletes() -> None:
    a = campaign("http://x/a", campaign_id="a", lifetime="0.01", daily="0.005")
    in_force = CampaignsInForce()
    in_force.add(b"a", encode(a), 0)
    in_force.add(b"b", encode(campaign("http://x/b", campaign_id="b")), 1)
    in_force.add(b"a", b'{"schema": 1, "campaign_id": "a"}', 2)  # invalid: changes nothing
    in_force.add(b"b", encode(campaign("http://x/c", campaign_id="c")), 3)  # key is not its id
    in_force.add(b"b", None, 4)
    tally = SpendTally(NOW_MS)
    for value in (
        served("a", "0.004", BASE_MS),
        served("a", "0.003", NOW_MS - 1),
        served("a", "0.003", NOW_MS - 5_001),  # the day before
        b"not json",
        served("gone", "1.00", NOW_MS),
    ):
        tally.add(value)
    assert tally.unreadable == 1
    (status,) = statuses(in_force, tally)
    assert (status.campaign_id, status.version, status.spend.served) == ("a", 0, 3)
    assert msgspec.to_builtins(status.spend) == {
        "currency": "USD",
        "served": 3,
        # Spend above a budget lowered after it leaves nothing, not a negative amount.
        "lifetime": {"budget": "0.01", "spent": "0.01", "remaining": "0.00"},
        "today": {"budget": "0.005", "spent": "0.003", "remaining": "0.002"},
        "day": time.strftime("%Y-%m-%d", time.gmtime(NOW_MS // 1000)),
    }
