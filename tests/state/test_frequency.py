"""`streams.state.frequency`: event-time sliding-window caps, out-of-order safe, bounded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.state.campaigns import Cap
from streams.state.frequency import (
    ALLOWED_LATENESS_MS,
    MAX_KEPT_IMPRESSIONS,
    Impressions,
    blocking_cap,
    dropped_through,
    expires_at,
    is_late,
    kept_count,
    kept_ms,
    record,
)
from streams.worker.tables import CapEntry

T0 = 1_700_000_000_000
SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE


def serve_all(times: Sequence[int], caps: Sequence[Cap]) -> tuple[Impressions, list[int]]:
    """The worker's rule: serve if no cap blocks and not late, then record."""
    impressions = Impressions()
    longest = max((cap.window_ms for cap in caps), default=0)
    served = []
    for t in times:
        if blocking_cap(impressions.times, caps, t) is None and not is_late(impressions, caps, t):
            record(impressions, t, longest, MAX_KEPT_IMPRESSIONS)
            served.append(t)
    return impressions, served


def in_window(times: Sequence[int], end: int, window_ms: int) -> int:
    """Brute force: how many of `times` lie in (end - window, end]."""
    return sum(1 for x in times if end - window_ms < x <= end)


# -- the cap itself ----------------------------------------------------------------------------


def test_the_max_th_impression_is_allowed_and_the_next_denied() -> None:
    cap = Cap(max=3, window_ms=HOUR)
    impressions = Impressions()
    for i in range(3):
        assert blocking_cap(impressions.times, [cap], T0 + i) is None
        record(impressions, T0 + i, cap.window_ms, MAX_KEPT_IMPRESSIONS)
    assert impressions.times == [T0, T0 + 1, T0 + 2]
    assert blocking_cap(impressions.times, [cap], T0 + 3) == cap
    assert blocking_cap(impressions.times, [cap], T0 + HOUR - 1) == cap


def test_a_cap_of_one() -> None:
    cap = Cap(max=1, window_ms=MINUTE)
    assert blocking_cap([], [cap], T0) is None
    assert blocking_cap([T0], [cap], T0) == cap


def test_window_is_open_at_its_start_and_closed_at_its_end() -> None:
    cap = Cap(max=1, window_ms=MINUTE)
    # An impression exactly at t - window is outside (t - window, t].
    assert blocking_cap([T0], [cap], T0 + MINUTE) is None
    assert blocking_cap([T0], [cap], T0 + MINUTE - 1) == cap
    # An impression at t itself is inside.
    assert blocking_cap([T0 + MINUTE], [cap], T0 + MINUTE) == cap


def test_in_order_counts_only_the_window_ending_at_t() -> None:
    cap = Cap(max=2, window_ms=10 * SECOND)
    times = [T0, T0 + 5 * SECOND]
    assert blocking_cap(times, [cap], T0 + 9_999) == cap
    assert blocking_cap(times, [cap], T0 + 10_000) is None  # T0 left the window


def test_the_most_restrictive_cap_wins() -> None:
    hourly = Cap(max=5, window_ms=HOUR)
    per_minute = Cap(max=1, window_ms=MINUTE)
    caps = [hourly, per_minute]
    assert blocking_cap([T0], caps, T0 + 30 * SECOND) == per_minute
    four = [T0 + i * 2 * MINUTE for i in range(5)]
    assert blocking_cap(four, caps, T0 + 20 * MINUTE) == hourly
    assert blocking_cap(four, caps, T0 + HOUR + 1) is None
    assert blocking_cap(four, [per_minute, hourly], T0 + 8 * MINUTE + 1) == per_minute


def test_no_caps_never_block() -> None:
    assert blocking_cap([T0] * 10, [], T0) is None


def test_a_late_request_must_keep_later_windows_within_the_cap() -> None:
    cap = Cap(max=2, window_ms=10 * SECOND)
    served = [T0 + 10 * SECOND, T0 + 12 * SECOND]
    late = T0 + 5 * SECOND
    # DESIGN's window ending at `late` is empty ...
    assert in_window(served, late, cap.window_ms) == 0
    # ... but (T0 + 2 s, T0 + 12 s] would hold three.
    assert blocking_cap(served, [cap], late) == cap
    # Late by enough that every later window misses it: allowed.
    assert blocking_cap(served, [cap], T0 + 2 * SECOND) is None
    assert blocking_cap(served, [cap], T0 + 2 * SECOND + 1) == cap


def test_a_late_request_between_two_impressions() -> None:
    cap = Cap(max=2, window_ms=10 * SECOND)
    served = [T0, T0 + 8 * SECOND]
    late = T0 + 5 * SECOND
    assert in_window(served, late, cap.window_ms) == 1  # DESIGN's own window has room ...
    assert blocking_cap(served, [cap], late) == cap  # ... but (T0 - 2 s, T0 + 8 s] would not
    assert blocking_cap([T0, T0 + 20 * SECOND], [cap], T0 + 10 * SECOND) is None


# -- pruning and lateness ----------------------------------------------------------------------


def test_record_keeps_times_sorted() -> None:
    impressions = Impressions()
    for t in [T0 + 5, T0 + 1, T0 + 3, T0 + 1]:
        record(impressions, t, MINUTE, MAX_KEPT_IMPRESSIONS)
    assert impressions.times == [T0 + 1, T0 + 1, T0 + 3, T0 + 5]
    assert impressions.horizon == 0


def test_record_drops_what_no_window_can_see_and_remembers_how_far() -> None:
    cap = Cap(max=1, window_ms=MINUTE)
    impressions = Impressions()
    record(impressions, T0, cap.window_ms, MAX_KEPT_IMPRESSIONS)
    newest = T0 + MINUTE + ALLOWED_LATENESS_MS
    record(impressions, newest, cap.window_ms, MAX_KEPT_IMPRESSIONS)
    assert impressions.times == [newest]
    assert impressions.horizon == T0
    # Windows of t reach back to t - window: exactly at the horizon is still exact.
    assert not is_late(impressions, [cap], T0 + MINUTE)
    assert is_late(impressions, [cap], T0 + MINUTE - 1)
    assert is_late(impressions, [cap], T0)


def test_nothing_is_dropped_within_the_allowed_lateness() -> None:
    impressions = Impressions()
    record(impressions, T0, MINUTE, MAX_KEPT_IMPRESSIONS)
    record(impressions, T0 + MINUTE + ALLOWED_LATENESS_MS - 1, MINUTE, MAX_KEPT_IMPRESSIONS)
    assert impressions.times == [T0, T0 + MINUTE + ALLOWED_LATENESS_MS - 1]
    assert impressions.horizon == 0
    assert not is_late(impressions, [Cap(1, MINUTE)], T0 - 10 * HOUR)


def test_a_late_impression_is_dropped_at_once() -> None:
    impressions = Impressions()
    record(impressions, T0 + 10 * HOUR, MINUTE, MAX_KEPT_IMPRESSIONS)
    record(impressions, T0, MINUTE, MAX_KEPT_IMPRESSIONS)
    assert impressions.times == [T0 + 10 * HOUR]
    assert impressions.horizon == T0


def test_is_late_uses_the_longest_window_of_the_caps_in_force() -> None:
    impressions = Impressions(times=[T0 + 10 * HOUR], horizon=T0)
    t = T0 + MINUTE
    assert not is_late(impressions, [Cap(1, MINUTE)], t)
    assert is_late(impressions, [Cap(1, MINUTE), Cap(5, MINUTE + 1)], t)
    assert not is_late(impressions, [], T0)
    assert is_late(impressions, [], T0 - 1)


def test_what_is_kept_is_the_history_or_the_longest_window_if_longer() -> None:
    assert kept_ms(0, 7 * 24 * HOUR) == 7 * 24 * HOUR  # no caps: the history alone
    assert kept_ms(HOUR, 24 * HOUR) == 24 * HOUR
    assert kept_ms(30 * 24 * HOUR, 24 * HOUR) == 30 * 24 * HOUR


def test_an_uncapped_campaign_keeps_its_history() -> None:
    history = 24 * HOUR
    impressions = Impressions()
    for t in (T0, T0 + 12 * HOUR, T0 + history + ALLOWED_LATENESS_MS):
        record(impressions, t, kept_ms(0, history), MAX_KEPT_IMPRESSIONS)
    # T0 is exactly at the edge: dropped; 12 h later is kept.
    assert impressions.times == [T0 + 12 * HOUR, T0 + history + ALLOWED_LATENESS_MS]
    assert impressions.horizon == T0
    assert expires_at(impressions, kept_ms(0, history)) == T0 + 2 * history + 2 * (
        ALLOWED_LATENESS_MS
    )


def test_within_the_allowed_lateness_nothing_is_late_and_what_is_kept_counts() -> None:
    # Kept for 1 h (plus lateness), then a cap of 2 per 6 h: its windows reach behind the
    # horizon. A request within the allowed lateness counts what is kept, ...
    impressions = Impressions()
    for t in (T0, T0 + 3 * HOUR):
        record(impressions, t, HOUR, MAX_KEPT_IMPRESSIONS)
    assert impressions.times == [T0 + 3 * HOUR]
    assert impressions.horizon == T0
    longer = [Cap(2, 6 * HOUR)]
    newest = T0 + 3 * HOUR
    for t in (newest - ALLOWED_LATENESS_MS, newest, newest + HOUR):
        assert not is_late(impressions, longer, t)
        assert blocking_cap(impressions.times, longer, t) is None
    # ... one further behind whose windows reach behind the horizon is refused.
    assert is_late(impressions, longer, newest - ALLOWED_LATENESS_MS - 1)
    # Windows that start at or after the horizon miss nothing, however late.
    assert not is_late(impressions, [Cap(2, HOUR)], T0 + HOUR)


def test_expires_at() -> None:
    impressions = Impressions()
    assert expires_at(impressions, HOUR) == HOUR + ALLOWED_LATENESS_MS
    record(impressions, T0, HOUR, MAX_KEPT_IMPRESSIONS)
    record(impressions, T0 - 5, HOUR, MAX_KEPT_IMPRESSIONS)
    assert expires_at(impressions, HOUR) == T0 + HOUR + ALLOWED_LATENESS_MS
    pruned = Impressions(times=[], horizon=T0)
    assert expires_at(pruned, HOUR) == T0 + HOUR + ALLOWED_LATENESS_MS


def test_expiry_and_record_drop_by_the_same_rule() -> None:
    keep = kept_ms(HOUR, 24 * HOUR)
    assert dropped_through(T0, keep) == T0 - keep - ALLOWED_LATENESS_MS
    impressions = Impressions()
    record(impressions, T0, keep, MAX_KEPT_IMPRESSIONS)
    # The whole key expires at the first event time that would drop its newest impression.
    at = expires_at(impressions, keep)
    assert dropped_through(at, keep) == T0
    assert dropped_through(at - 1, keep) < T0
    record(impressions, at, keep, MAX_KEPT_IMPRESSIONS)
    assert impressions.times == [at]
    assert impressions.horizon == T0


def test_a_key_that_may_have_expired_whole_is_late_only_where_its_windows_reach() -> None:
    cap = Cap(max=1, window_ms=HOUR)
    expired = dropped_through(T0 + 30 * HOUR, kept_ms(HOUR, 24 * HOUR))  # T0 + 5 h
    # Absent (or recorded afresh, horizon 0): windows reaching behind the bound may have
    # missed an impression of the expired key.
    for impressions in (Impressions(), Impressions(times=[T0 + 29 * HOUR])):
        assert is_late(impressions, [cap], T0 + 6 * HOUR - 1, expired)
        assert not is_late(impressions, [cap], T0 + 6 * HOUR, expired)
        assert not is_late(impressions, [cap], T0 + 6 * HOUR - 1)
    # However far ahead the partition (or the key's own newest impression) runs, a window
    # behind neither bound is exact.
    assert not is_late(Impressions(times=[T0 + 29 * HOUR]), [cap], T0 + 7 * HOUR, expired)


def test_state_stays_bounded_over_a_long_in_order_stream() -> None:
    cap = Cap(max=1_000, window_ms=HOUR)
    impressions = Impressions()
    step = MINUTE
    for i in range(24 * 60):
        record(impressions, T0 + i * step, cap.window_ms, MAX_KEPT_IMPRESSIONS)
    assert len(impressions.times) <= (HOUR + ALLOWED_LATENESS_MS) // step + 1
    assert impressions.times[-1] == T0 + (24 * 60 - 1) * step
    assert impressions.horizon == impressions.times[-1] - HOUR - ALLOWED_LATENESS_MS


@pytest.mark.parametrize("late_by", [0, 1, HOUR])
def test_a_request_behind_the_horizon_is_refused_not_counted_wrongly(late_by: int) -> None:
    cap = Cap(max=1, window_ms=MINUTE)
    impressions, served = serve_all([T0, T0 + 3 * HOUR, T0 + 30 * SECOND - late_by], [cap])
    # The first impression is gone, and a request whose window held it is not served.
    assert served == [T0, T0 + 3 * HOUR]
    assert impressions.times == [T0 + 3 * HOUR]


# -- properties --------------------------------------------------------------------------------

UNIT = 10 * MINUTE  # windows and times on a grid (with +-1 ms jitter) to hit every boundary

caps_strategy = st.lists(
    st.builds(
        Cap,
        max=st.integers(min_value=1, max_value=4),
        window_ms=st.integers(min_value=1, max_value=8).map(lambda k: k * UNIT),
    ),
    min_size=1,
    max_size=3,
)
event_time = st.builds(
    lambda k, jitter: T0 + k * UNIT + jitter,
    st.integers(min_value=0, max_value=36),
    st.sampled_from([-1, 0, 0, 1]),
)


def window_ends(served: Sequence[int], caps: Sequence[Cap]) -> set[int]:
    """Every end position at which some window's count changes, and its neighbours."""
    ends = set()
    for x in served:
        for cap in caps:
            for end in (x, x + cap.window_ms):
                ends.update({end - 1, end, end + 1})
    return ends


def assert_no_window_exceeds_a_cap(served: Sequence[int], caps: Sequence[Cap]) -> None:
    for end in window_ends(served, caps):
        for cap in caps:
            assert in_window(served, end, cap.window_ms) <= cap.max, (end, cap)


def fits_by_brute_force(served: Sequence[int], caps: Sequence[Cap], t: int) -> bool:
    """One more impression at t keeps every window within every cap."""
    with_t = [*served, t]
    return all(
        in_window(with_t, end, cap.window_ms) <= cap.max
        for end in window_ends(with_t, caps)
        for cap in caps
    )


@settings(max_examples=300)
@given(caps_strategy, st.lists(event_time, max_size=40))
def test_no_window_ever_exceeds_a_cap_whatever_the_arrival_order(
    caps: list[Cap], times: list[int]
) -> None:
    impressions, served = serve_all(times, caps)
    assert_no_window_exceeds_a_cap(served, caps)
    # The kept state is exactly what lies after the horizon, sorted.
    assert impressions.times == sorted(x for x in served if x > impressions.horizon)
    if served:
        longest = max(cap.window_ms for cap in caps)
        assert impressions.horizon <= max(served) - longest - ALLOWED_LATENESS_MS or (
            impressions.horizon == 0
        )


@settings(max_examples=300)
@given(caps_strategy, st.lists(event_time, max_size=40))
def test_out_of_order_decisions_are_exact_unless_late(caps: list[Cap], times: list[int]) -> None:
    impressions = Impressions()
    longest = max(cap.window_ms for cap in caps)
    served: list[int] = []
    for t in times:
        late = is_late(impressions, caps, t)
        fits = blocking_cap(impressions.times, caps, t) is None
        if late:
            # Only ever refused for being further behind than the allowed lateness.
            assert t < max(served) - ALLOWED_LATENESS_MS
        else:
            assert fits == fits_by_brute_force(served, caps, t), t
        if fits and not late:
            record(impressions, t, longest, MAX_KEPT_IMPRESSIONS)
            served.append(t)


@settings(max_examples=300)
@given(caps_strategy, st.lists(event_time, max_size=40))
def test_in_order_decisions_are_exactly_the_design_rule(caps: list[Cap], times: list[int]) -> None:
    in_order = sorted(times)
    _, served = serve_all(in_order, caps)
    expected: list[int] = []
    for t in in_order:
        # docs/design.md: serve only if fewer than `max` served impressions lie in (t - window, t].
        if all(in_window(expected, t, cap.window_ms) < cap.max for cap in caps):
            expected.append(t)
    assert served == expected


@settings(max_examples=100)
@given(
    caps_strategy,
    st.lists(st.integers(min_value=0, max_value=2 * MINUTE), min_size=1, max_size=200),
)
def test_pruning_keeps_state_bounded(caps: list[Cap], gaps: list[int]) -> None:
    longest = max(cap.window_ms for cap in caps)
    impressions = Impressions()
    t = T0
    for gap in gaps:
        t += gap
        record(impressions, t, longest, MAX_KEPT_IMPRESSIONS)
        assert impressions.times[0] > t - longest - ALLOWED_LATENESS_MS
    assert impressions.times[-1] == t


def test_recording_order_does_not_change_the_state() -> None:
    # A worker commits impressions as their upstream calls end, not in stream order.
    longest = 30 * MINUTE
    a, b = T0, T0 + 10 * HOUR
    c = b + 31 * MINUTE
    in_stream_order, as_they_ended = Impressions(), Impressions()
    for t in (a, b, c):
        record(in_stream_order, t, longest, MAX_KEPT_IMPRESSIONS)
    for t in (a, c, b):
        record(as_they_ended, t, longest, MAX_KEPT_IMPRESSIONS)
    assert in_stream_order == as_they_ended
    late_or_not = b - HOUR
    caps = [Cap(1, longest)]
    assert is_late(in_stream_order, caps, late_or_not) == is_late(as_they_ended, caps, late_or_not)


@settings(max_examples=200)
@given(st.lists(event_time, max_size=30), st.randoms(use_true_random=False))
def test_the_state_is_a_function_of_the_impressions_not_their_order(
    times: list[int], random: Any
) -> None:
    longest = 2 * UNIT
    in_order, shuffled = Impressions(), Impressions()
    for t in times:
        record(in_order, t, longest, MAX_KEPT_IMPRESSIONS)
    random.shuffle(times)
    for t in times:
        record(shuffled, t, longest, MAX_KEPT_IMPRESSIONS)
    assert in_order == shuffled


# -- the length bound ----------------------------------------------------------------------------


@settings(max_examples=300)
@given(caps_strategy, st.lists(event_time, max_size=40))
def test_in_order_decisions_stay_exact_keeping_only_the_largest_cap_of_times(
    caps: list[Cap], times: list[int]
) -> None:
    in_order = sorted(times)
    longest = max(cap.window_ms for cap in caps)
    keep_count = max(cap.max for cap in caps)  # the fewest that keep every cap exact
    impressions, served = Impressions(), []
    for t in in_order:
        if blocking_cap(impressions.times, caps, t) is None and not is_late(impressions, caps, t):
            record(impressions, t, longest, keep_count)
            served.append(t)
        assert len(impressions.times) <= keep_count
    assert served == serve_all(in_order, caps)[1]


def test_one_key_taking_all_traffic_stays_small_enough_for_a_changelog_record() -> None:
    # An uncapped campaign and a user id every request carries: every request is served.
    impressions = Impressions()
    for i in range(3 * MAX_KEPT_IMPRESSIONS):
        record(impressions, T0 + i * SECOND, kept_ms(0, 7 * 24 * HOUR), kept_count([]))
    assert len(impressions.times) == MAX_KEPT_IMPRESSIONS
    assert impressions.times[0] == T0 + 2 * MAX_KEPT_IMPRESSIONS * SECOND
    assert impressions.horizon == impressions.times[0] - SECOND
    assert len(msgspec.msgpack.encode(CapEntry(impressions, 0))) < 128 * 1024


def test_a_cap_allowing_more_than_the_bound_keeps_as_many() -> None:
    assert kept_count([]) == MAX_KEPT_IMPRESSIONS
    assert kept_count([Cap(3, HOUR), Cap(25_000, 24 * HOUR)]) == 25_000


@pytest.mark.parametrize("cut", [True, False])
def test_behind_the_newest_a_list_cut_to_its_length_refuses_what_it_cannot_count(
    cut: bool,
) -> None:
    impressions = Impressions()
    count = MAX_KEPT_IMPRESSIONS + (1 if cut else 0)
    for i in range(count):
        record(impressions, T0 + i * SECOND, 24 * HOUR, MAX_KEPT_IMPRESSIONS)
    assert (impressions.horizon > 0) is cut
    caps = [Cap(MAX_KEPT_IMPRESSIONS, 24 * HOUR)]
    newest = impressions.times[-1]
    # A minute behind: within the allowed lateness, but its day reaches past what was cut.
    assert is_late(impressions, caps, newest - MINUTE) is cut
    assert not is_late(impressions, caps, newest)
