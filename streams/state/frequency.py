"""Frequency caps as event-time sliding windows over one (user, campaign)'s served impressions.

DESIGN.md: serve at t only if, for every cap, fewer than `max` impressions lie in
(t - window, t]. Requests can arrive out of event-time order, so an impression at t must also
keep every *later* window that contains t within its cap: we check every window ending in
[t, t + window), which for in-order requests is exactly the rule above and never lets a cap be
exceeded for late ones.

The impression list keeps only what some future check can still see: times older than the
longest window (plus `ALLOWED_LATENESS_MS` for late requests) before the newest impression are
dropped, and `horizon` remembers how far. A request whose windows reach behind the horizon
cannot be checked exactly, so it is refused (`late`) rather than risk the cap.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Sequence

import msgspec

from streams.state.campaigns import Cap

ALLOWED_LATENESS_MS = 3_600_000
"""How far behind the newest impression a request may be and still be checked exactly."""


class Impressions(msgspec.Struct):
    """The served impression times (Unix ms, sorted) of one user for one campaign."""

    times: list[int] = msgspec.field(default_factory=list)
    horizon: int = 0
    """Every time <= horizon has been dropped."""


def _count(times: Sequence[int], start_exclusive: int, end_inclusive: int) -> int:
    return bisect_right(times, end_inclusive) - bisect_right(times, start_exclusive)


def blocking_cap(times: Sequence[int], caps: Iterable[Cap], t: int) -> Cap | None:
    """The first cap that one more impression at `t` would break, or None if it fits.

    `times` must be sorted. For each cap, the windows containing t end at s in [t, t + w);
    the count in (s - w, s] only rises at s = t or at an impression inside (t, t + w), so
    those are the only ends to look at.
    """
    for cap in caps:
        w = cap.window_ms
        ends = [t, *times[bisect_right(times, t) : bisect_left(times, t + w)]]
        if max(_count(times, s - w, s) for s in ends) >= cap.max:
            return cap
    return None


def is_late(impressions: Impressions, caps: Sequence[Cap], t: int) -> bool:
    """True when a window of `t` reaches behind what has been dropped."""
    longest = max((cap.window_ms for cap in caps), default=0)
    return impressions.horizon > 0 and t - longest < impressions.horizon


def record(impressions: Impressions, t: int, longest_window_ms: int) -> None:
    """Add a served impression at `t` and drop what no window can see any more."""
    insort(impressions.times, t)
    drop_through = impressions.times[-1] - longest_window_ms - ALLOWED_LATENESS_MS
    cut = bisect_right(impressions.times, drop_through)
    if cut:
        # The newest time dropped, not `drop_through`: that depends on the order impressions
        # are recorded in (a worker records them as their upstream calls end).
        impressions.horizon = max(impressions.horizon, impressions.times[cut - 1])
        del impressions.times[:cut]


def expires_at(impressions: Impressions, longest_window_ms: int) -> int:
    """The event time after which this state can no longer deny anything."""
    newest = impressions.times[-1] if impressions.times else impressions.horizon
    return newest + longest_window_ms + ALLOWED_LATENESS_MS
