"""The billing report: exact decimals from micros, per campaign and UTC day, a grand total per
currency, as text and JSON."""

from __future__ import annotations

import msgspec

from streams.billing.ledger import Counts, Total
from streams.billing.report import GrandTotal, Line, build, render_json, render_text

TOTALS = [
    Total("camp-a", "EUR", "2026-01-01", 1, 1),
    Total("camp-a", "USD", "2026-01-01", 3, 7500),
    Total("camp-a", "USD", "2026-01-02", 2, 2_500_000),
    Total("camp-b", "USD", "2026-01-02", 1, 10**15),
]


def test_three_charges_of_a_quarter_cent_total_exactly() -> None:
    report = build([Total("camp-a", "USD", "2026-01-01", 3, 3 * 2500)], Counts(3, 0, 0))
    assert report.lines == (Line("camp-a", "2026-01-01", "USD", 3, "0.0075", 7500),)
    assert report.grand_totals == (GrandTotal("USD", 3, "0.0075", 7500),)


def test_grand_totals_per_currency_exact_to_the_micro() -> None:
    report = build(TOTALS, Counts(7, 2, 1))
    assert [line.amount for line in report.lines] == [
        "0.000001",
        "0.0075",
        "2.50",
        "1000000000.00",
    ]
    assert report.grand_totals == (
        GrandTotal("EUR", 1, "0.000001", 1),
        GrandTotal("USD", 6, "1000000002.5075", 10**15 + 2_507_500),
    )
    assert (report.duplicates, report.rejected) == (2, 1)


def test_text_lists_lines_then_totals_decimal_points_aligned() -> None:
    text = render_text(build(TOTALS, Counts(7, 2, 1)))
    assert text.splitlines() == [
        "campaign  UTC day     cur  charges             amount",
        "camp-a    2026-01-01  EUR        1           0.000001",
        "camp-a    2026-01-01  USD        3           0.0075",
        "camp-a    2026-01-02  USD        2           2.50",
        "camp-b    2026-01-02  USD        1  1000000000.00",
        "total                 EUR        1           0.000001",
        "total                 USD        6  1000000002.5075",
        "duplicates not charged: 2; rejected records: 1",
    ]


def test_an_empty_ledger_says_so() -> None:
    text = render_text(build([], Counts(0, 0, 0)))
    assert "(no charges)" in text


def test_json_amounts_are_decimal_strings() -> None:
    decoded = msgspec.json.decode(render_json(build(TOTALS, Counts(7, 2, 1))))
    assert decoded["grand_totals"][1] == {
        "currency": "USD",
        "charges": 6,
        "amount": "1000000002.5075",
        "amount_micros": 10**15 + 2_507_500,
    }
    assert decoded["lines"][0]["amount"] == "0.000001"
