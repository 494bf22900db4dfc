"""Retries for idempotent failures: exponential backoff with full jitter.

Only failures that another attempt could cure are retried: a connection that failed, a
timeout, a 5xx (`VastError.retryable`). A 4xx, a bad document or a refused address is final.
Each hop retries on its own, and never past the chain's deadline.

Two spellings of the same thing: a `RetryPolicy` given to `VastUpstream(retry=...)`, or the
session guide's `RetryMiddleware(upstream=..., max_retries=3)` wrapping an upstream
(`streams.vast.upstream`).
"""

from __future__ import annotations

import random

import msgspec


class RetryPolicy(msgspec.Struct, frozen=True):
    max_retries: int = 3
    backoff: float = 0.05
    """The first retry waits up to this many seconds; each further one up to twice as long."""
    max_backoff: float = 1.0

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (0 for the first).

        Full jitter (a uniform draw up to the exponential bound) spreads the retries of many
        requests that failed together, instead of sending them back in a synchronised wave.
        """
        return random.uniform(0.0, min(self.max_backoff, self.backoff * 2.0**retry))


NO_RETRIES = RetryPolicy(max_retries=0)
