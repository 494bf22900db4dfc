"""The event-time window of an audit (`--from`, `--to`) and the ways a time may be written.

Event time is what every record carries as its timestamp (docs/design.md), so a window selects the
same requests and decisions whichever topic they are read from. `--from` is inclusive, `--to`
exclusive; either may be missing.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import msgspec

from streams.invariants import utc as iso

__all__ = ["Window", "iso", "parse_time"]

_UNIX_MS = re.compile(r"[0-9]{1,16}")


class Window(msgspec.Struct, frozen=True):
    start_ms: int | None = None
    """Inclusive; None: from the beginning."""
    end_ms: int | None = None
    """Exclusive; None: to the end offsets seen when the replay starts."""

    def __post_init__(self) -> None:
        if self.start_ms is not None and self.end_ms is not None and self.end_ms <= self.start_ms:
            raise ValueError(
                f"the window is empty: --to {iso(self.end_ms)} is not after --from "
                f"{iso(self.start_ms)}"
            )

    def __contains__(self, t_ms: int) -> bool:
        return (self.start_ms is None or t_ms >= self.start_ms) and (
            self.end_ms is None or t_ms < self.end_ms
        )

    @property
    def bounded(self) -> bool:
        return self.start_ms is not None or self.end_ms is not None

    def describe(self) -> str:
        if not self.bounded:
            return "all event times"
        start = "the beginning" if self.start_ms is None else iso(self.start_ms)
        end = "the end" if self.end_ms is None else iso(self.end_ms)
        return f"event times from {start} to {end} (exclusive)"


def parse_time(text: str) -> int:
    """Unix milliseconds, or ISO 8601 (`2026-11-27`, `2026-11-27T12:00:00Z`, with an offset;
    without one, UTC), as Unix milliseconds."""
    text = text.strip()
    if _UNIX_MS.fullmatch(text):
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither Unix milliseconds nor an ISO 8601 time "
            "(e.g. 2026-11-27T12:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # Exact: timedelta arithmetic in integers, never a float timestamp.
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
