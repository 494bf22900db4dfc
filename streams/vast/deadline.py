"""The chain's deadline as parsing and merging see it: CPU work stops at it too, not only I/O.

A document under the body cap can still hold tens of thousands of elements, and merging Wrappers
multiplies what they add by the InLine's creatives; both check the deadline as they go, so a
hostile document costs at most the chain's timeout, with a defined outcome (301).
"""

from __future__ import annotations

import math
import time

from streams.vast.errors import DeadlinePassed


class Deadline:
    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at = at
        """On `time.monotonic`'s clock: the event loop's may lag behind while CPU work runs."""

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def check(self, doing: str) -> None:
        if time.monotonic() >= self.at:
            raise DeadlinePassed(f"the chain deadline passed {doing}")


NO_DEADLINE = Deadline(math.inf)
"""For parsing and merging outside a chain (tests, tools)."""
