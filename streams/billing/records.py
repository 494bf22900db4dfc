"""From one `ad-served` record to what the ledger keeps: a `Charge`, or the record `Rejected`
with the reason.

Billing reads only the fields it bills (a tolerant reader: `ad`, `vast` and `chain` are the
audit's business) and none of `models.codec`'s 64 KiB cap, since an `AdServed` carries its
VAST document, which may be larger. A record is rejected, never guessed at, when those fields
are missing or wrong, when its `schema` is not the one this code knows, or when its cost is not
exact micros.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from models.codec import MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS
from models.events import SCHEMA_VERSION
from models.money import MoneyError, to_micros
from streams.billing.ledger import MAX_CHARGE_MICROS, Charge, Rejected

NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class Billable(msgspec.Struct, frozen=True):
    """The fields of `AdServed` that a charge is made of."""

    schema: int
    request_id: NonEmpty
    campaign_id: NonEmpty
    timestamp: Annotated[int, msgspec.Meta(ge=MIN_TIMESTAMP_MS, lt=MAX_TIMESTAMP_MS)]
    cost: str
    currency: Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}\\Z")]


_decoder = msgspec.json.Decoder(Billable)


def read_record(
    partition: int, offset: int, key: bytes | None, value: bytes | None
) -> Charge | Rejected:
    """The charge an `ad-served` record stands for, or the record kept whole with the reason
    it is not one."""
    try:
        served, cost_micros = _billable(value)
    except ValueError as exc:
        return Rejected(partition=partition, offset=offset, error=str(exc), key=key, value=value)
    return Charge(
        request_id=served.request_id,
        campaign_id=served.campaign_id,
        timestamp=served.timestamp,
        cost_micros=cost_micros,
        currency=served.currency,
        partition=partition,
        offset=offset,
    )


def _billable(value: bytes | None) -> tuple[Billable, int]:
    if value is None:
        raise ValueError("no value (a tombstone is not an AdServed)")
    try:
        served = _decoder.decode(value)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ValueError(f"not an AdServed: {exc}") from exc
    if served.schema != SCHEMA_VERSION:
        raise ValueError(f"schema {served.schema} is not supported (only {SCHEMA_VERSION})")
    try:
        cost_micros = to_micros(served.cost)
    except MoneyError as exc:
        raise ValueError(f"cost: {exc}") from exc
    if cost_micros > MAX_CHARGE_MICROS:
        raise ValueError(f"cost {served.cost} is over the ledger's limit for one charge")
    return served, cost_micros
