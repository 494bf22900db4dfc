"""The audit's window (`--from`, `--to`) and the ledger reconciliation, both pure."""

from __future__ import annotations

import pytest

from streams.audit.reconcile import reconcile
from streams.audit.window import Window, iso, parse_time
from streams.billing.ledger import Charge
from streams.decision_reader import Decision


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1793149320000", 1_793_149_320_000),
        ("2026-11-27", 1_795_737_600_000),
        ("2026-11-27T12:00:00Z", 1_795_780_800_000),
        ("2026-11-27T12:00:00.123Z", 1_795_780_800_123),
        ("2026-11-27T13:00:00+01:00", 1_795_780_800_000),
        ("2026-11-27 12:00:00", 1_795_780_800_000),  # no offset: UTC
    ],
)
def test_times_are_unix_ms_or_iso_8601(text: str, expected: int) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "-5", "12.5", "2026-13-01"])
def test_other_times_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="neither Unix milliseconds nor an ISO 8601 time"):
        parse_time(text)


def test_window_bounds() -> None:
    window = Window(1000, 2000)
    assert 999 not in window and 1000 in window and 1999 in window and 2000 not in window
    assert 0 in Window() and 10**13 in Window(end_ms=None)
    assert iso(1_795_780_800_123) == "2026-11-27T12:00:00.123Z"
    with pytest.raises(ValueError, match="the window is empty"):
        Window(2000, 2000)


def _served(request_id: str, offset: int, cost: str = "0.0025") -> Decision:
    payload = {
        "request_id": request_id,
        "campaign_id": "c",
        "timestamp": 1000 + offset,
        "cost": cost,
        "currency": "USD",
        "where": f"ad-served[0]@{offset}",
    }
    return Decision("served", payload, offset, 0)


def _charge(request_id: str, offset: int, micros: int = 2500) -> Charge:
    return Charge(request_id, "c", 1000 + offset, micros, "USD", 0, offset)


def test_reconcile_tells_lag_from_loss() -> None:
    served = [_served(f"r{i}", i) for i in range(6)]
    charges = [
        _charge("r0", 0),
        _charge("r1", 1, micros=2501),  # a different cost
        # r2 lost; r4, r5 past what billing has read: it lags, nothing is wrong
        _charge("r3", 3),
        _charge("r3", 3),  # twice
        _charge("x-extra", 2),  # for no served decision
        _charge("x-later", 7),  # billed after the audit read to offset 6: not checked
        _charge("x-bogus", 9),  # past what the ledger itself says it has read
    ]
    summary, violations = reconcile(
        "ledger.sqlite", served, charges, billed_to={0: 8}, read_to={0: 6}, window=Window()
    )
    # r4, r5 are below billed_to 8 here, so they are missing: tell it apart below.
    assert {(v.kind, v.request_id) for v in violations} == {
        ("ledger_mismatch", "r1"),
        ("ledger_missing", "r2"),
        ("ledger_extra", "r3"),
        ("ledger_missing", "r4"),
        ("ledger_missing", "r5"),
        ("ledger_extra", "x-extra"),
        ("ledger_extra", "x-bogus"),
    }
    assert (summary.matched, summary.unbilled, summary.beyond_replay) == (1, 0, 1)
    summary, violations = reconcile(
        "ledger.sqlite", served, charges[:2], billed_to={0: 4}, read_to={0: 6}, window=Window()
    )
    assert {(v.kind, v.request_id) for v in violations} == {
        ("ledger_mismatch", "r1"),
        ("ledger_missing", "r2"),
        ("ledger_missing", "r3"),
    }
    assert (summary.matched, summary.unbilled, summary.charges) == (1, 2, 2)
    assert summary.micros == {"USD": 5001}


def test_reconcile_only_inside_the_window() -> None:
    served = [_served("r0", 0), _served("r1", 1)]
    summary, violations = reconcile(
        "l", served, [_charge("r1", 1)], {0: 2}, {0: 2}, Window(1001, 2000)
    )
    assert violations == []
    assert (summary.charges, summary.matched) == (1, 1)
