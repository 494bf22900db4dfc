"""`models.money`: decimal strings at the edges, integer micros inside, exact, never a float."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.money import (
    CPM_MAX_PLACES,
    MICROS_PER_UNIT,
    MoneyError,
    from_micros,
    impression_cost,
    to_decimal,
    to_micros,
)

# The largest amount `to_micros` reads: 15 whole digits and 6 decimal places.
MAX_MICROS = 10**21 - 1


@pytest.mark.parametrize(
    ("amount", "micros"),
    [
        ("0", 0),
        ("0.00", 0),
        ("0.000001", 1),
        ("0.0025", 2_500),
        ("2.5", 2_500_000),
        ("2.50", 2_500_000),
        ("2.500000", 2_500_000),
        ("10", 10_000_000),
        ("1234.567891", 1_234_567_891),
        ("999999999999999.999999", MAX_MICROS),
    ],
)
def test_to_micros_is_exact_to_the_micro(amount: str, micros: int) -> None:
    assert to_micros(amount) == micros


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (0, "0.00"),
        (1, "0.000001"),
        (10, "0.00001"),
        (2_500, "0.0025"),
        (2_500_000, "2.50"),
        (2_000_000, "2.00"),
        (2_510_000, "2.51"),
        (1_234_567_891, "1234.567891"),
        (MAX_MICROS, "999999999999999.999999"),
    ],
)
def test_from_micros_writes_exact_decimals_with_at_least_two_places(micros: int, text: str) -> None:
    assert from_micros(micros) == text


@pytest.mark.parametrize(
    "amount",
    [
        # floats written with exponents, in any spelling
        "1e3",
        "1E3",
        "2.5e-1",
        "1e-6",
        # signs
        "-1",
        "+1",
        "-0.00",
        # too many places
        "0.0000001",
        "1.1234567",
        # not numbers, or not plain
        "NaN",
        "nan",
        "Infinity",
        "-Infinity",
        "inf",
        "",
        " ",
        " 1.00",
        "1.00 ",
        "1.00\n",
        "1,00",
        "1_000",
        "1.",
        ".5",
        "01",
        "00.5",
        "0x10",
        "\u0661",  # an Arabic-Indic digit one: Python's int() would read it
        "1.0.0",
        "1234567890123456",  # 16 whole digits
    ],
)
def test_to_micros_rejects_anything_but_a_plain_decimal(amount: str) -> None:
    with pytest.raises(MoneyError):
        to_micros(amount)


@pytest.mark.parametrize("amount", [2.5, 2, None, b"2.50", Decimal("2.50"), True])
def test_to_micros_rejects_non_strings(amount: Any) -> None:
    with pytest.raises(MoneyError):
        to_micros(amount)


def test_money_error_is_a_value_error() -> None:
    assert issubclass(MoneyError, ValueError)


def test_max_places_limits_the_decimals() -> None:
    assert to_micros("1.234", max_places=CPM_MAX_PLACES) == 1_234_000
    assert to_micros("1.230", max_places=3) == 1_230_000
    with pytest.raises(MoneyError, match="more than 3 decimal places"):
        to_micros("1.2345", max_places=3)
    # Trailing zeros are places too: "1.2340" is a 4-place CPM.
    with pytest.raises(MoneyError):
        to_micros("1.2340", max_places=3)
    with pytest.raises(MoneyError):
        to_micros("1.5", max_places=0)
    assert to_micros("7", max_places=0) == 7_000_000


def test_from_micros_rejects_negative_amounts() -> None:
    with pytest.raises(MoneyError):
        from_micros(-1)


def test_to_decimal_is_exact() -> None:
    assert to_decimal(2_500) == Decimal("0.0025")
    assert to_decimal(1) == Decimal("0.000001")
    assert to_decimal(MAX_MICROS) == Decimal("999999999999999.999999")
    assert to_decimal(0) == 0


@pytest.mark.parametrize(
    ("cpm", "cost"),
    [("2.50", 2_500), ("0.001", 1), ("1000", 1_000_000), ("0", 0), ("12.345", 12_345)],
)
def test_impression_cost_is_a_thousandth_of_the_cpm(cpm: str, cost: int) -> None:
    assert impression_cost(to_micros(cpm, max_places=CPM_MAX_PLACES)) == cost


@pytest.mark.parametrize("cpm", ["0.0001", "2.5001", "1.000999", "0.000001"])
def test_impression_cost_rejects_cpms_with_more_than_three_places(cpm: str) -> None:
    with pytest.raises(MoneyError, match="more than 3 decimal places"):
        impression_cost(to_micros(cpm))


micros = st.integers(min_value=0, max_value=MAX_MICROS)


@given(micros)
def test_micros_round_trip_through_text(m: int) -> None:
    text = from_micros(m)
    assert to_micros(text) == m
    assert Decimal(text) == to_decimal(m) == Decimal(m) / MICROS_PER_UNIT
    whole, _, fraction = text.partition(".")
    assert 2 <= len(fraction) <= 6
    assert whole == str(m // MICROS_PER_UNIT)


@given(st.decimals(min_value=0, max_value=Decimal(MAX_MICROS) / 10**6, places=6))
def test_decimal_text_and_micros_agree(value: Decimal) -> None:
    text = f"{value:f}"
    m = to_micros(text)
    assert Decimal(m) / MICROS_PER_UNIT == value
    assert to_decimal(m) == value
    assert Decimal(from_micros(m)) == value


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_repr_of_a_float_is_only_read_when_it_is_a_plain_decimal(value: float) -> None:
    text = repr(value)
    try:
        m = to_micros(text)
    except MoneyError:
        plain = Decimal(text) if text not in {"nan", "inf", "-inf"} else None
        # Refused: an exponent, a sign, a special value, or more than 6 places / 15 digits.
        assert (
            plain is None
            or "e" in text
            or plain < 0
            or text.startswith("-")
            or plain.as_tuple().exponent < -6  # type: ignore[operator]
            or plain >= 10**15
        )
    else:
        assert "e" not in text
        assert Decimal(m) / MICROS_PER_UNIT == Decimal(text)


@given(st.integers(min_value=0, max_value=10**12))
def test_impression_cost_times_a_thousand_is_the_cpm(cost: int) -> None:
    assert impression_cost(cost * 1000) == cost
    with pytest.raises(MoneyError):
        impression_cost(cost * 1000 + 1 + cost % 999)
