"""Watching decisions (`adstream tail`): which records to show, from when, and how each one
reads, as a JSON line or a table row. No I/O here; `streams.cli.tail` reads the topics."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import msgspec

from models.events import DenialReason
from streams.audit.window import parse_time
from streams.dead_letters import identifiers_of_letter

Source = Literal["served", "denied", "dlq"]
DEAD_LETTER = "dead_letter"
"""The outcome of a record of the dead-letter topic."""
OUTCOMES = ("served", *get_args(DenialReason), DEAD_LETTER)
"""What `--outcome` may name."""

_RELATIVE = re.compile(r"(\d+)\s*(s|m|h|d)")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_since(text: str, now_ms: int) -> int:
    """Unix ms of `--from`: a time ago (`90s`, `10m`, `2h`, `1d`) before `now_ms`, or an
    absolute time (ISO 8601, UTC without an offset; or Unix ms)."""
    if match := _RELATIVE.fullmatch(text.strip()):
        return now_ms - int(match.group(1)) * _UNIT_MS[match.group(2)]
    try:
        return parse_time(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a time ago (90s, 10m, 2h, 1d) nor an ISO 8601 time "
            "(2026-11-27T12:00:00Z) nor Unix milliseconds"
        ) from None


class Line(msgspec.Struct, frozen=True):
    """One record as `tail` shows it."""

    source: Source
    partition: int
    offset: int
    timestamp: int
    """Event time (Unix ms): the record's timestamp, which is its request's event time."""
    outcome: str
    """`served`, a denial reason, or `dead_letter`."""
    campaign_id: str | None
    user_id: str | None
    request_id: str | None
    detail: str
    event: dict[str, Any]
    """The record's value as JSON: `AdServed`, `AdDenied` or `DeadLetter`."""


def line_of(
    source: Source, partition: int, offset: int, timestamp: int, event: dict[str, Any]
) -> Line:
    if source == "dlq":
        ids = identifiers_of_letter(event.get("value"))
        return Line(
            source, partition, offset, timestamp, DEAD_LETTER,
            ids.campaign_id, ids.user_id, ids.request_id, str(event.get("error", "")), event,
        )  # fmt: skip
    if source == "served":
        outcome = "served"
        detail = f"{event.get('cost')} {event.get('currency')}, v{event.get('campaign_version')}"
    else:
        outcome = str(event.get("reason"))
        detail = event.get("detail") or ""
    return Line(
        source, partition, offset, timestamp, outcome,
        event.get("campaign_id"), event.get("user_id"), event.get("request_id"), detail, event,
    )  # fmt: skip


class TailFilter(msgspec.Struct, frozen=True):
    """Each non-empty set keeps only lines whose field is one of it; empty sets keep all."""

    campaigns: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    request_ids: frozenset[str] = frozenset()
    outcomes: frozenset[str] = frozenset()
    since_ms: int | None = None
    """Keeps only lines of this event time or later: event times are not in offset order, so
    a partition read from the first record at `since_ms` holds earlier ones after it."""

    def keeps(self, line: Line) -> bool:
        if self.since_ms is not None and line.timestamp < self.since_ms:
            return False
        return all(
            not wanted or value in wanted
            for wanted, value in (
                (self.campaigns, line.campaign_id),
                (self.users, line.user_id),
                (self.request_ids, line.request_id),
                (self.outcomes, line.outcome),
            )
        )


_encoder = msgspec.json.Encoder()


def as_json(line: Line) -> str:
    """One JSON object: where the record is, its outcome, and the event itself."""
    document = {
        "source": line.source,
        "partition": line.partition,
        "offset": line.offset,
        "time": iso_ms(line.timestamp),
        "outcome": line.outcome,
        "event": line.event,
    }
    return _encoder.encode(document).decode()


TABLE_COLUMNS = (
    ("time (UTC)", 23),
    ("outcome", 17),
    ("campaign", 16),
    ("user", 12),
    ("request_id", 40),
    ("detail", 0),
)


def table_header() -> str:
    return _row([name for name, _ in TABLE_COLUMNS])


def as_row(line: Line) -> str:
    """A table row: fixed column widths, so that rows line up as they come (a longer value
    pushes the rest of its row right rather than being cut)."""
    cells = [
        iso_ms(line.timestamp).replace("T", " ").rstrip("Z"),
        line.outcome,
        line.campaign_id or "-",
        line.user_id or "-",
        line.request_id or "-",
        line.detail,
    ]
    return _row(cells)


def _row(cells: list[str]) -> str:
    padded = [cell.ljust(width) for cell, (_, width) in zip(cells, TABLE_COLUMNS, strict=True)]
    return "  ".join(padded).rstrip()


def iso_ms(timestamp_ms: int) -> str:
    moment = datetime.fromtimestamp(timestamp_ms // 1000, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{timestamp_ms % 1000:03d}Z"
