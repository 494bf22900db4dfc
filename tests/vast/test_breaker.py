"""The circuit breaker: its rules on a clock of our own, then a resolver using it against a
slow upstream beside a healthy one on the same server."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from models.context import SessionContext
from streams.vast import CircuitBreaker, VastUpstream
from streams.vast.breaker import MAX_LAG_S, MAX_TRACKED_ENDPOINTS, EndpointState, endpoint_of
from tests.upstream import VastServer, inline, vast

SLOW = "http://ads.example:8080/vast?id=1"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breaker(clock: Clock) -> CircuitBreaker:
    """Opens on timeouts in a row however close together (its span rule: below)."""
    return CircuitBreaker(threshold=3, cooldown=10.0, min_failing=0.0, clock=clock)


def time_out(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.timed_out(SLOW, lag=0.0)


def test_it_opens_after_threshold_timeouts_in_a_row(breaker: CircuitBreaker) -> None:
    for _ in range(2):
        assert not breaker.timed_out(SLOW, lag=0.0)
        assert breaker.allows(SLOW)
    assert breaker.timed_out(SLOW, lag=0.0)  # this one opened it: the caller logs that
    assert not breaker.allows(SLOW)
    assert not breaker.timed_out(SLOW, lag=0.0)  # already open: said once


def test_a_burst_of_timeouts_opens_it_only_once_the_streak_has_lasted(clock: Clock) -> None:
    """Hundreds of requests in flight time out together when the upstream stalls once: as
    many in a row as a dead upstream's, but within a moment."""
    breaker = CircuitBreaker(threshold=3, cooldown=10.0, min_failing=2.0, clock=clock)
    for _ in range(500):
        breaker.timed_out(SLOW, lag=0.0)
    assert breaker.allows(SLOW)
    clock.now += 1.9
    breaker.timed_out(SLOW, lag=0.0)
    assert breaker.allows(SLOW)
    clock.now += 0.1
    breaker.timed_out(SLOW, lag=0.0)
    assert not breaker.allows(SLOW)

    # An answer ends the streak: the next one starts its own span.
    clock.now += 10
    assert breaker.allows(SLOW)
    breaker.answered(SLOW)
    for _ in range(3):
        breaker.timed_out(SLOW, lag=0.0)
    clock.now += 1.0
    breaker.timed_out(SLOW, lag=0.0)
    assert breaker.allows(SLOW)


def test_a_timeout_noticed_late_is_the_workers_overload_and_does_not_count(
    breaker: CircuitBreaker,
) -> None:
    for _ in range(5):
        breaker.timed_out(SLOW, lag=MAX_LAG_S * 2)
    assert breaker.allows(SLOW)
    for _ in range(3):
        breaker.timed_out(SLOW, lag=MAX_LAG_S)
    assert not breaker.allows(SLOW)


def test_an_answer_between_timeouts_starts_the_count_again(breaker: CircuitBreaker) -> None:
    breaker.timed_out(SLOW, lag=0.0)
    breaker.timed_out(SLOW, lag=0.0)
    breaker.answered(SLOW)
    breaker.timed_out(SLOW, lag=0.0)
    breaker.timed_out(SLOW, lag=0.0)
    assert breaker.allows(SLOW)


def test_after_the_cooldown_one_probe_goes_and_its_answer_closes(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    time_out(breaker, 3)
    clock.now += 9.9
    assert not breaker.allows(SLOW)
    clock.now += 0.1
    assert breaker.allows(SLOW)  # the probe
    assert not breaker.allows(SLOW)  # the others wait for it
    breaker.answered(SLOW)
    assert breaker.allows(SLOW)
    assert breaker.allows(SLOW)


def test_a_probe_that_times_out_opens_it_for_another_cooldown(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    time_out(breaker, 3)
    clock.now += 10
    assert breaker.allows(SLOW)
    clock.now += 1
    assert not breaker.timed_out(SLOW, lag=0.0)  # open again, not newly: no second warning
    clock.now += 9.9
    assert not breaker.allows(SLOW)
    clock.now += 0.1
    assert breaker.allows(SLOW)


def test_a_probe_that_never_reports_back_does_not_shut_the_endpoint_for_good(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    time_out(breaker, 3)
    clock.now += 10
    assert breaker.allows(SLOW)
    clock.now += 10
    assert breaker.allows(SLOW)


def test_endpoints_are_urls_without_their_query(breaker: CircuitBreaker) -> None:
    time_out(breaker, 3)
    assert not breaker.allows("http://ADS.example:8080/vast?id=2&cb=12345678")
    assert breaker.allows("http://ads.example:8080/other/path")
    assert breaker.allows("https://ads.example:8080/vast?id=1")
    assert breaker.allows("http://ads.example/vast?id=1")
    assert breaker.allows("http://cdn.example:8080/vast?id=1")


def test_endpoints_remembered_are_bounded(breaker: CircuitBreaker) -> None:
    for n in range(MAX_TRACKED_ENDPOINTS + 1):
        breaker.timed_out(f"http://host-{n}.example/", lag=0.0)
    for _ in range(3):
        breaker.timed_out("http://host-0.example/", lag=0.0)  # forgotten: counts from zero again
    assert not breaker.allows("http://host-0.example/")
    assert len(breaker) == MAX_TRACKED_ENDPOINTS


def test_states_list_open_endpoints_first_and_are_bounded(breaker: CircuitBreaker) -> None:
    """What the worker's metrics and status page report: bounded, whatever wrappers name."""
    assert breaker.states(most=10) == [] and breaker.open_count() == 0
    breaker.timed_out("http://a.example/x", lag=0.0)
    time_out(breaker, 3)  # SLOW opens
    for _ in range(2):
        breaker.timed_out("http://b.example/y?q=1", lag=0.0)
    assert breaker.states(most=10) == [
        EndpointState("http://ads.example:8080/vast", open=True, timeouts=3),
        EndpointState("http://b.example/y", open=False, timeouts=2),
        EndpointState("http://a.example/x", open=False, timeouts=1),
    ]
    assert breaker.states(most=1) == breaker.states(most=10)[:1]
    assert breaker.open_count() == 1
    breaker.answered(SLOW)
    assert breaker.open_count() == 0 and len(breaker.states(most=10)) == 2


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker(cooldown=0)
    with pytest.raises(ValueError):
        CircuitBreaker(min_failing=-1)


async def test_a_slow_upstream_is_failed_at_once_while_open_and_others_are_unaffected(
    server: VastServer, context: SessionContext, caplog: pytest.LogCaptureFixture
) -> None:
    slow = server.add(vast(inline()), delay=2.0)
    healthy = server.add(vast(inline()))  # the same server, another path
    breaker = CircuitBreaker(threshold=2, cooldown=0.5, min_failing=0.1)
    caplog.set_level(logging.WARNING, logger="streams.vast.upstream")
    async with VastUpstream(hop_timeout=0.2, timeout=1.0, breaker=breaker) as upstream:
        for _ in range(2):
            started = time.monotonic()
            result = await upstream.fetch(slow, context=context)
            assert (result.status, result.error_code) == ("error", 301)
            assert time.monotonic() - started >= 0.2

        result = await upstream.fetch(slow, context=context)
        assert (result.status, result.error_code) == ("error", 301)
        assert len(server.seen(slow)) == 2  # failed at once: not asked again
        assert [r.getMessage() for r in caplog.records] == [
            f"upstream {endpoint_of(slow)} keeps timing out: its URLs fail at once (301) "
            "for 0.5 s, then one request probes it"
        ]
        assert (await upstream.fetch(healthy, context=context)).status == "inline"

        # The cooldown over, the upstream fast again: the probe is served and closes it.
        server.set(slow, vast(inline()))
        await asyncio.sleep(0.5)
        assert (await upstream.fetch(slow, context=context)).status == "inline"
        assert (await upstream.fetch(slow, context=context)).status == "inline"
        assert len(server.seen(slow)) == 4
