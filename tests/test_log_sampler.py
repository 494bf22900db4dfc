"""The log rate limiter: per key and interval, every line admitted or counted, keys bounded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.log_sampler import LogSampler


def test_a_few_lines_per_interval_then_the_count_of_those_left_out() -> None:
    sampler = LogSampler(interval_s=10, per_interval=2)
    assert [sampler.admit("a", t) for t in (0, 1, 2, 3, 4)] == [0, 0, None, None, None]
    assert sampler.admit("b", 5) == 0
    assert sampler.admit("a", 10) == 3
    assert sampler.admit("a", 11) == 0
    assert sampler.admit("a", 12) is None


@given(
    st.lists(st.tuples(st.sampled_from("abcdef"), st.floats(0, 5, allow_nan=False)), max_size=200),
    st.integers(1, 3),
    st.integers(1, 8),
)
def test_every_line_is_admitted_or_counted_and_each_window_admits_at_most_its_share(
    steps: list[tuple[str, float]], per_interval: int, max_keys: int
) -> None:
    sampler = LogSampler(interval_s=10, per_interval=per_interval, max_keys=max_keys)
    now, admitted, reported = 0.0, 0, 0
    in_window: dict[str, list[float]] = {}
    for key, gap in steps:
        now += gap
        left_out = sampler.admit(key, now)
        assert len(sampler) <= max_keys + 1
        if left_out is not None:
            admitted += 1
            reported += left_out
            in_window.setdefault(key, []).append(now)
    # A line of each key much later reports what was still left out.
    reported += sum(sampler.admit(key, now + 100) or 0 for key in "abcdef")
    if max_keys >= 6:  # nothing was forgotten or pooled: every line is accounted for
        assert admitted + reported == len(steps)
        for times in in_window.values():
            # Windows do not overlap, so any span shorter than one meets at most two.
            later = times[2 * per_interval :]
            assert all(b - a >= 10 for a, b in zip(times, later, strict=False))


def test_new_keys_share_one_window_once_every_tracked_key_is_busy() -> None:
    sampler = LogSampler(interval_s=10, max_keys=2)
    assert sampler.admit("a", 0) == 0 and sampler.admit("b", 0) == 0
    assert sampler.admit("c", 1) == 0  # a third key: pooled with the ones after it
    assert sampler.admit("d", 2) is None
    assert len(sampler) == 3
    # Windows that ended with nothing left out make room again ...
    assert sampler.admit("e", 20) == 0
    assert len(sampler) == 2
    # ... and one that left lines out stays until it has said so.
    assert sampler.admit("f", 21) == 1
