"""The billing report: the ledger's totals per campaign and UTC day, and a grand total per
currency, as exact decimals. Pure: ledger totals in, text or JSON out.

Amounts are `Decimal`s made from integer micros (`models.money.to_decimal`), shown with at
least two decimal places and every significant one after that, never rounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import msgspec

from models.money import to_decimal
from streams.billing.ledger import Counts, Total


class Line(msgspec.Struct, frozen=True):
    campaign_id: str
    day: str
    """UTC day of the charges' event time, ISO date."""
    currency: str
    charges: int
    amount: str
    """Exact decimal string, like the amounts on the topics."""
    amount_micros: int


class GrandTotal(msgspec.Struct, frozen=True):
    currency: str
    charges: int
    amount: str
    amount_micros: int


class Report(msgspec.Struct, frozen=True):
    lines: tuple[Line, ...]
    grand_totals: tuple[GrandTotal, ...]
    """One per currency: amounts in different currencies are never added up."""
    duplicates: int
    """AdServed records whose request_id was charged already (not charged again)."""
    rejected: int
    """Records of ad-served that were not a chargeable AdServed (kept in the ledger)."""


def build(totals: Sequence[Total], counts: Counts) -> Report:
    sums: dict[str, list[int]] = {}
    for total in totals:
        charges_and_micros = sums.setdefault(total.currency, [0, 0])
        charges_and_micros[0] += total.charges
        charges_and_micros[1] += total.cost_micros
    return Report(
        lines=tuple(
            Line(
                campaign_id=total.campaign_id,
                day=total.day,
                currency=total.currency,
                charges=total.charges,
                amount=_exact(to_decimal(total.cost_micros)),
                amount_micros=total.cost_micros,
            )
            for total in totals
        ),
        grand_totals=tuple(
            GrandTotal(
                currency=currency,
                charges=charges,
                amount=_exact(to_decimal(micros)),
                amount_micros=micros,
            )
            for currency, (charges, micros) in sorted(sums.items())
        ),
        duplicates=counts.duplicates,
        rejected=counts.rejected,
    )


def render_json(report: Report) -> str:
    return msgspec.json.format(msgspec.json.encode(report).decode(), indent=2)


def render_text(report: Report) -> str:
    header = ("campaign", "UTC day", "cur", "charges", "amount")
    amounts = _aligned([line.amount for line in report.lines + report.grand_totals])
    rows = [
        (line.campaign_id, line.day, line.currency, f"{line.charges:,}", amount)
        for line, amount in zip(report.lines, amounts, strict=False)
    ]
    totals = [
        ("total", "", grand.currency, f"{grand.charges:,}", amount)
        for grand, amount in zip(report.grand_totals, amounts[len(rows) :], strict=True)
    ]
    widths = [max(len(row[i]) for row in [header, *rows, *totals]) for i in range(len(header))]

    def format_row(row: tuple[str, ...]) -> str:
        # Names left-aligned, numbers right-aligned.
        cells = [
            cell.ljust(width) if i < 3 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    lines = [format_row(header), *map(format_row, rows)]
    if not rows:
        lines.append("(no charges)")
    lines += map(format_row, totals)
    lines.append(
        f"duplicates not charged: {report.duplicates:,}; rejected records: {report.rejected:,}"
    )
    return "\n".join(lines)


def _exact(amount: Decimal) -> str:
    """`2.5` -> "2.50", `0.0025` -> "0.0025": every significant place, at least two."""
    exponent = amount.normalize().as_tuple().exponent
    assert isinstance(exponent, int), "money is finite"
    return f"{amount:.{max(2, -exponent)}f}"


def _aligned(amounts: Sequence[str]) -> list[str]:
    """Decimal strings padded so that their decimal points line up."""
    split = [amount.partition(".") for amount in amounts]
    whole = max((len(units) for units, _, _ in split), default=0)
    places = max((len(fraction) for _, _, fraction in split), default=0)
    return [f"{units.rjust(whole)}.{fraction.ljust(places)}" for units, _, fraction in split]
