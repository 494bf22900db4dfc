"""Frequency caps as event-time sliding windows over one (user, campaign)'s served impressions.

docs/design.md: serve at t only if, for every cap, fewer than `max` impressions lie in
(t - window, t]. Requests can arrive out of event-time order, so an impression at t must also
keep every *later* window that contains t within its cap: we check every window ending in
[t, t + window), which for in-order requests is exactly the rule above and never lets a cap be
exceeded for late ones.

Every served impression of an identified user is recorded, whether or not its campaign has
caps: a cap added (or a window lengthened) by a later campaign update counts the impressions
served before it (docs/design.md: every served impression counts). The list keeps what a check can
still see: `kept_ms(longest window, history)` of event time, the impression history horizon
(the worker's `ADSTREAM_IMPRESSION_HISTORY_S`) or the campaign's longest window if that is
longer, plus `ALLOWED_LATENESS_MS` for late requests, before the newest impression. Older
times are dropped (`dropped_through`), and `horizon` remembers how far. By the same rule the
worker drops a whole key once its partition's newest event time (the watermark) has passed
`expires_at`, so a key dropped by a watermark held nothing after `dropped_through(watermark)`.

So a window no longer than the history is always exact. A window longer than the history
counts what is kept: everything once the cap has been in force for its whole window, but
only the history's worth of impressions served before the cap was added or lengthened.

The list also keeps at most `kept_count(caps)` times, the newest: at least
`MAX_KEPT_IMPRESSIONS`, more if a cap allows more. Without that bound one key that takes all
traffic (an edge sending every request with the same user id, a bot on an uncapped campaign)
would grow without end: every check scans it, and its changelog record passes Kafka's 1 MiB
limit at ~110k times, which would stop the worker. A cap of `max` needs only the newest `max`
times of a window to be exact, so in-order requests stay exact.

A request is refused as late (`is_late`) only when its windows reach behind what may have
been dropped for its own key, which then cannot be checked exactly: behind the whole key's
possible expiry (`dropped_through` of the watermark it was last expired by; an absent key, or
one recorded afresh since, may have held times up to there), or, more than the allowed
lateness behind the key's newest impression, behind its `horizon`. Within the allowed
lateness of its newest impression a request is not refused for the horizon, unless the list
is at its length bound: with the caps unchanged its windows miss nothing dropped for age, and
a window reaching further back than was kept (a cap added or lengthened since) counts what is
kept. Other keys' event times never make a request late, however far ahead they run.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Sequence

import msgspec

from streams.state.campaigns import Cap

ALLOWED_LATENESS_MS = 3_600_000
"""How far behind the newest impression a request may be and still be checked exactly."""

DEFAULT_HISTORY_MS = 7 * 86_400_000
"""The impression history horizon a worker keeps unless told otherwise (7 days)."""


MAX_KEPT_IMPRESSIONS = 10_000
"""The fewest impression times a full list keeps (`kept_count`): ~90 KB of changelog record."""


def kept_ms(longest_window_ms: int, history_ms: int) -> int:
    """How much event time of impressions (before the newest) is kept, lateness aside."""
    return max(longest_window_ms, history_ms)


def dropped_through(now: int, keep_ms: int) -> int:
    """The newest impression time no longer kept once event time reaches `now`, for a
    campaign keeping `keep_ms` (`kept_ms`): `record` drops a key's times by its newest
    impression, expiry drops whole keys by the partition's watermark (`expires_at`)."""
    return now - keep_ms - ALLOWED_LATENESS_MS


def kept_count(caps: Iterable[Cap]) -> int:
    """How many impression times are kept at most under these caps."""
    return max([MAX_KEPT_IMPRESSIONS, *(cap.max for cap in caps)])


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


def is_late(
    impressions: Impressions, caps: Sequence[Cap], t: int, expired_through: int | None = None
) -> bool:
    """True when a window of `t` reaches behind what may have been dropped for this key:
    behind `expired_through` (`dropped_through` of the watermark its partition's keys were
    last expired by: the key may have been dropped whole, and recorded afresh since), or,
    more than the allowed lateness behind the newest impression, behind the horizon."""
    longest = max((cap.window_ms for cap in caps), default=0)
    if expired_through is not None and t - longest < expired_through:
        return True
    if impressions.horizon <= 0:
        return False
    newest = impressions.times[-1] if impressions.times else impressions.horizon
    if t - longest >= impressions.horizon:
        return False  # its windows miss nothing that was dropped
    # Within the lateness only a list cut to its length bound can miss what a window held.
    cut_to_length = len(impressions.times) >= MAX_KEPT_IMPRESSIONS
    return t < newest - ALLOWED_LATENESS_MS or (cut_to_length and t < newest)


def record(impressions: Impressions, t: int, keep_ms: int, keep_count: int) -> None:
    """Add a served impression at `t`, drop what is no longer kept by the newest impression
    (`dropped_through`), and keep at most the newest `keep_count` (`kept_count`)."""
    insort(impressions.times, t)
    drop_through = dropped_through(impressions.times[-1], keep_ms)
    cut = max(bisect_right(impressions.times, drop_through), len(impressions.times) - keep_count)
    if cut:
        # The newest time dropped, not `drop_through`: that depends on the order impressions
        # are recorded in (a worker records them as their upstream calls end).
        impressions.horizon = max(impressions.horizon, impressions.times[cut - 1])
        del impressions.times[:cut]


def expires_at(impressions: Impressions, keep_ms: int) -> int:
    """The first event time at which all of this state is dropped: the `now` whose
    `dropped_through` reaches the newest impression."""
    newest = impressions.times[-1] if impressions.times else impressions.horizon
    return newest + (newest - dropped_through(newest, keep_ms))
