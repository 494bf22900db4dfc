"""A circuit breaker per upstream endpoint: one that keeps timing out is failed at once.

A request to a slow upstream costs its whole deadline, and a worker's batch waits for its
slowest request, so one slow ad server would slow every decision of the worker, not just its
own campaigns' (docs/reliability.md). After `threshold` timeouts in a row from one endpoint
(scheme, host, port and path: the query is left out, as tags put per-request macros there, and
other paths of the same server may be healthy), over at least `min_failing` seconds, its URLs
fail at once for `cooldown` seconds with the same IAB code as a timeout (301). Then one
request is let through to probe it: any answer closes the breaker, another timeout opens it
again for a cooldown.

The span matters because a busy worker has hundreds of requests in flight to one endpoint: a
single stall of the upstream longer than the hop deadline (a garbage collection, a network
blip) times them all out together, which is `threshold` in a row at once. A breaker opening
on that turned a one-second hiccup into a cooldown of denials for every campaign on the
endpoint (`tests/scale` `big_state`: 92,877 of a million requests denied 301 by a healthy,
occasionally paused upstream). An upstream that is really down keeps timing out past
`min_failing`.

Only the upstream's slowness counts, not the worker's: a timeout noticed more than
`MAX_LAG_S` after its deadline comes from an event loop too busy to read answers in time (a
worker overloaded by its own backlog), and would otherwise shut healthy upstreams out.

Pure bookkeeping on a clock, no I/O; `streams.vast.upstream` asks it before each hop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple
from urllib.parse import urlsplit

DEFAULT_THRESHOLD = 5
DEFAULT_COOLDOWN_S = 10.0
DEFAULT_MIN_FAILING_S = 2.0
MAX_LAG_S = 0.02
MAX_TRACKED_ENDPOINTS = 10_000
"""Endpoints with timeouts remembered at once: wrappers can name any URL, and hostile ones
could name a new one each time; the oldest entries go first."""


class EndpointState(NamedTuple):
    """An endpoint the breaker tracks: it has timed out since it last answered."""

    endpoint: str
    open: bool
    """Its breaker has opened (its URLs fail at once, but for a probe after each cooldown)."""
    timeouts: int
    """Timeouts in a row."""


class _Endpoint:
    __slots__ = ("failing_since", "open_until", "timeouts")

    def __init__(self, now: float) -> None:
        self.timeouts = 0
        self.failing_since = now
        """When the first timeout of the current streak was noticed."""
        self.open_until = 0.0


class CircuitBreaker:
    """Shared by every upstream of a process; all methods are cheap and synchronous."""

    def __init__(
        self,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        cooldown: float = DEFAULT_COOLDOWN_S,
        min_failing: float = DEFAULT_MIN_FAILING_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1 or cooldown <= 0 or min_failing < 0:
            raise ValueError("threshold must be >= 1, cooldown > 0 and min_failing >= 0")
        self.threshold = threshold
        self.cooldown = cooldown
        self.min_failing = min_failing
        self._clock = clock
        self._endpoints: dict[str, _Endpoint] = {}

    def __len__(self) -> int:
        """How many endpoints it tracks (at most `MAX_TRACKED_ENDPOINTS`)."""
        return len(self._endpoints)

    def allows(self, url: str) -> bool:
        """Whether a request to `url` may go out now."""
        if not self._endpoints:  # nothing has timed out: the usual case, and no URL parsing
            return True
        state = self._endpoints.get(endpoint_of(url))
        if state is None or not state.open_until:
            return True
        now = self._clock()
        if now < state.open_until:
            return False
        # The cooldown is over: this request probes the endpoint, and the others fail for
        # another cooldown unless it answers (a probe that never reports back cannot keep
        # the endpoint shut for good).
        state.open_until = now + self.cooldown
        return True

    def timed_out(self, url: str, lag: float) -> bool:
        """A request to `url` timed out, noticed `lag` seconds after its deadline. True when
        this timeout opened its endpoint's breaker (and the caller should say so)."""
        if lag > MAX_LAG_S:
            return False
        endpoint = endpoint_of(url)
        now = self._clock()
        state = self._endpoints.get(endpoint)
        if state is None:
            if len(self._endpoints) >= MAX_TRACKED_ENDPOINTS:
                del self._endpoints[next(iter(self._endpoints))]
            state = self._endpoints[endpoint] = _Endpoint(now)
        state.timeouts += 1
        if state.timeouts < self.threshold or now - state.failing_since < self.min_failing:
            return False
        opened = not state.open_until
        state.open_until = now + self.cooldown
        return opened

    def answered(self, url: str) -> None:
        """`url` answered (with any HTTP status): its endpoint is healthy again."""
        if self._endpoints:
            self._endpoints.pop(endpoint_of(url), None)

    def states(self, most: int) -> list[EndpointState]:
        """Up to `most` of the tracked endpoints, open ones first, then by timeouts."""
        states = [
            EndpointState(endpoint, bool(state.open_until), state.timeouts)
            for endpoint, state in self._endpoints.items()
        ]
        states.sort(key=lambda state: (not state.open, -state.timeouts, state.endpoint))
        return states[:most]

    def open_count(self) -> int:
        """How many tracked endpoints have their breaker open."""
        return sum(1 for state in self._endpoints.values() if state.open_until)


def endpoint_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() + parts.path
