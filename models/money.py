"""Money: decimal strings on the wire, integer micros inside, never a float.

A micro is 1/1,000,000 of the currency unit. A CPM has at most 3 decimal places, so one
impression (CPM / 1000) always costs a whole number of micros.
"""

from __future__ import annotations

import re
from decimal import Decimal

MICROS_PER_UNIT = 1_000_000
CPM_MAX_PLACES = 3

# Plain non-negative decimals only: no sign, no exponent, no spaces, no "NaN" or "Infinity".
_DECIMAL = re.compile(r"(0|[1-9][0-9]{0,14})(?:\.([0-9]{1,6}))?")


class MoneyError(ValueError):
    """A money string that is not a plain non-negative decimal with at most 6 places."""


def to_micros(amount: str, *, max_places: int = 6) -> int:
    """`"2.50"` -> 2_500_000. Rejects what cannot be exact micros."""
    match = _DECIMAL.fullmatch(amount) if isinstance(amount, str) else None
    if match is None:
        raise MoneyError(
            f"{amount!r} is not a decimal amount like '2.50' (no sign, exponent or spaces)"
        )
    whole, fraction = match.group(1), match.group(2) or ""
    if len(fraction) > max_places:
        raise MoneyError(f"{amount!r} has more than {max_places} decimal places")
    return int(whole) * MICROS_PER_UNIT + int(fraction.ljust(6, "0"))


def from_micros(micros: int) -> str:
    """2_500_000 -> `"2.50"`, 2_500 -> `"0.0025"`: exact, at least two decimal places."""
    if micros < 0:
        raise MoneyError(f"negative amount: {micros} micros")
    whole, fraction = divmod(micros, MICROS_PER_UNIT)
    digits = f"{fraction:06d}".rstrip("0").ljust(2, "0")
    return f"{whole}.{digits}"


def to_decimal(micros: int) -> Decimal:
    """For reports and edges that want a Decimal; exact."""
    return Decimal(micros).scaleb(-6)


def impression_cost(cpm_micros: int) -> int:
    """The cost of one impression in micros: CPM / 1000, exact by the 3-place CPM rule."""
    cost, remainder = divmod(cpm_micros, 1000)
    if remainder:
        raise MoneyError(f"a CPM of {from_micros(cpm_micros)} has more than 3 decimal places")
    return cost
