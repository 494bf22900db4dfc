"""One JSON codec for every topic: encode any event; decode and validate at the boundary.

Decoding checks, in order: size, JSON syntax and field types (msgspec), the `schema` version,
then the rules a type cannot express (money, event-time range, cookie sizes). Every failure is
an `InvalidEvent` whose `reason` is one short, stable word (for metrics and the DLQ) and whose
message says exactly what was wrong.
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Any, Literal, TypeVar, cast

import msgspec
import msgspec.inspect

from models.events import (
    MAX_BUDGET_MICROS,
    MAX_CPM_MICROS,
    SCHEMA_VERSION,
    AdRequest,
    Campaign,
)
from models.leases import LeaseRecord
from models.money import CPM_MAX_PLACES, MoneyError, from_micros, to_micros

MAX_EVENT_BYTES = 64 * 1024
"""The largest request or campaign message the worker accepts."""
MAX_RECORD_BYTES = 1_000_000
"""The largest record value the worker writes. Kafka refuses a record over the topic's
`max.message.bytes` (1,048,588 by default) and aiokafka's producer one over its
`max_request_size` (1,048,576); this leaves room for the key, headers and batch framing, so
every output is bounded below both by construction (docs/reliability.md, "Bounds")."""
# Event times outside [2000-01-01, 2100-01-01) are typos or unit mistakes (seconds, us).
MIN_TIMESTAMP_MS = 946_684_800_000
MAX_TIMESTAMP_MS = 4_102_444_800_000
MAX_COOKIES = 64
MAX_COOKIE_BYTES = 4096
MAX_AHEAD_OF_RECORD_MS = 60_000
"""How far an event time may run ahead of its record's timestamp (edge clock skew)."""

InvalidReason = Literal["oversize", "undecodable", "invalid", "schema_version"]

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


class _SchemaOnly(msgspec.Struct):
    schema: int | None = None


class InvalidEvent(ValueError):
    """A message that cannot be used; `reason` is its category, the message its detail."""

    def __init__(self, reason: InvalidReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def encode(event: msgspec.Struct) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes, kind: type[T], *, max_bytes: int | None = MAX_EVENT_BYTES) -> T:
    """Decode one message into `kind`, checking its size, types and schema version.

    `max_bytes=None` for the worker's own outputs: an `AdServed` carries a VAST document,
    which may be far larger than any request or campaign.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise InvalidEvent("oversize", f"{len(data)} bytes > {max_bytes}")
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        event: T = decoder.decode(data)
    except RecursionError as exc:
        # msgspec skips an unknown field's value recursively: deep nesting ends up here.
        raise InvalidEvent("undecodable", "JSON nested too deeply") from exc
    except UnicodeDecodeError as exc:
        raise InvalidEvent("undecodable", f"invalid UTF-8 in a JSON string: {exc}") from exc
    except msgspec.DecodeError as exc:
        # A message from a newer schema may not fit today's fields: say so rather than
        # report the first field that differs.
        _check_schema(data)
        reason: InvalidReason = (
            "invalid" if isinstance(exc, msgspec.ValidationError) else ("undecodable")
        )
        raise InvalidEvent(reason, str(exc)) from exc
    schema = getattr(event, "schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        raise InvalidEvent("schema_version", f"schema {schema} is not supported (only 1)")
    return event


def _refuse_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise InvalidEvent("invalid", f"key {name[:80]!r} appears twice in one object")
            seen.add(name)
    return obj


def refuse_duplicate_keys(data: bytes) -> None:
    """Raise `InvalidEvent` if any JSON object in `data` names a key twice.

    msgspec, like most JSON decoders, keeps the last of duplicate keys: `campaign_id` given
    twice would decide the second one while a reader of the first sees another campaign.
    Call after `decode` has accepted `data`, so only well-formed JSON gets here (~6 us for a
    request, once at the boundary)."""
    try:
        json.loads(data, object_pairs_hook=_refuse_pairs)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, InvalidEvent):
            raise
        raise InvalidEvent("undecodable", str(exc)) from exc


def _check_schema(data: bytes) -> None:
    try:
        schema = msgspec.json.decode(data, type=_SchemaOnly).schema
    except (msgspec.DecodeError, RecursionError):
        return
    if schema is not None and schema != SCHEMA_VERSION:
        raise InvalidEvent("schema_version", f"schema {schema} is not supported (only 1)")


def decode_lease_record(data: bytes) -> LeaseRecord:
    """A `budget-leases` record (its money still decimal strings)."""
    record: LeaseRecord = decode(data, cast(Any, LeaseRecord))
    return record


def decode_request(data: bytes) -> AdRequest:
    """An `AdRequest`, with its context's event time and cookies within sane bounds."""
    request = decode(data, AdRequest)
    refuse_duplicate_keys(data)
    context = request.context
    if not MIN_TIMESTAMP_MS <= context.timestamp < MAX_TIMESTAMP_MS:
        raise InvalidEvent(
            "invalid", f"context.timestamp {context.timestamp} is not Unix ms in 2000..2099"
        )
    if len(context.cookies) > MAX_COOKIES:
        raise InvalidEvent("invalid", f"{len(context.cookies)} cookies > {MAX_COOKIES}")
    for name, value in context.cookies.items():
        if len(name) + len(value) > MAX_COOKIE_BYTES:
            raise InvalidEvent("invalid", f"cookie {name[:40]!r} is over {MAX_COOKIE_BYTES} bytes")
    if not context.request_id:
        raise InvalidEvent("invalid", "context.request_id is empty")
    return request


def decode_campaign(data: bytes) -> Campaign:
    """A `Campaign` whose money fields are exact (CPM at most 3 places, budgets at most 6)
    and within what the worker's state holds (`models.events`, `MAX_*`), with no field it
    does not know and no key given twice."""
    try:
        campaign = decode(data, Campaign)
    except InvalidEvent as exc:
        raise InvalidEvent(exc.reason, _suggest_field(exc.detail)) from exc
    refuse_duplicate_keys(data)
    budget = campaign.budget
    _check_amount("cpm", campaign.cpm, MAX_CPM_MICROS, CPM_MAX_PLACES)
    _check_amount("budget.lifetime", budget.lifetime, MAX_BUDGET_MICROS)
    _check_amount("budget.daily", budget.daily, MAX_BUDGET_MICROS)
    if not campaign.vast_url.startswith(("http://", "https://")):
        raise InvalidEvent("invalid", f"vast_url {campaign.vast_url[:80]!r} is not http(s)")
    return campaign


def _check_amount(field: str, amount: str | None, limit_micros: int, places: int = 6) -> None:
    if amount is None:
        return
    try:
        micros = to_micros(amount, max_places=places)
    except MoneyError as exc:
        raise InvalidEvent("invalid", f"{field}: {exc}") from exc
    if micros > limit_micros:
        raise InvalidEvent(
            "invalid",
            f"{field}: {amount!r} is over the largest allowed, {from_micros(limit_micros)}",
        )


# msgspec's words for a field the type does not have (`forbid_unknown_fields`).
_UNKNOWN_FIELD = re.compile(
    r"Object contains unknown field `(?P<name>[^`]*)`(?: - at `(?P<at>[^`]*)`)?"
)
_PATH_STEP = re.compile(r"\.(\w+)|\[\d+\]")


def _suggest_field(detail: str) -> str:
    """`detail`, with the closest known field if it names an unknown one of a campaign."""
    unknown = _UNKNOWN_FIELD.fullmatch(detail)
    if unknown is None:
        return detail
    name, at = unknown["name"], unknown["at"] or "$"
    known = _fields_at(at)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known fields: {', '.join(known)}"
    where = "" if at == "$" else f" in {at[2:]}"
    return f"unknown field {name!r}{where}: {hint}"


def _fields_at(path: str) -> list[str]:
    """The field names of the struct at `path` (msgspec's `$.budget`, `$.caps[0]`) of a
    `Campaign`."""
    info: msgspec.inspect.Type = msgspec.inspect.type_info(Campaign)
    for step in _PATH_STEP.finditer(path):
        if step[1] is None:
            info = cast(msgspec.inspect.VarTupleType, info).item_type
        else:
            fields = cast(msgspec.inspect.StructType, info).fields
            info = next(field.type for field in fields if field.encode_name == step[1])
    if not isinstance(info, msgspec.inspect.StructType):
        return []
    return [field.encode_name for field in info.fields]


def decode_campaign_record(key: str, value: bytes) -> Campaign:
    """The `Campaign` of a `campaigns` record, which must be keyed by its own campaign_id
    (compaction keeps the last record per key: another key would outlive its update)."""
    campaign = decode_campaign(value)
    if campaign.campaign_id != key:
        raise InvalidEvent(
            "invalid", f"key {key!r} is not the campaign_id {campaign.campaign_id!r}"
        )
    return campaign


def check_event_time(event_ms: int, record_ms: int) -> None:
    """The broker refuses records stamped far in the future, so a decision for an event time
    far ahead of its record's could never be written: such a request is refused up front."""
    if event_ms > record_ms + MAX_AHEAD_OF_RECORD_MS:
        raise InvalidEvent(
            "invalid",
            f"context.timestamp {event_ms} is ahead of the record's timestamp {record_ms} "
            f"by more than {MAX_AHEAD_OF_RECORD_MS} ms",
        )
