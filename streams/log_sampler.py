"""Rate limits for log lines that can come thousands a second (an upstream failing for every
request, a timer overlapping on every tick): a few per key and interval get through, the rest
are counted so that the next one through can say how many were left out. Pure: the caller
passes the clock."""

from __future__ import annotations

OTHERS = "(others)"
"""The key shared by new keys once `max_keys` are tracked."""


class _Window:
    __slots__ = ("admitted", "left_out", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.admitted = 0
        self.left_out = 0


class LogSampler:
    """At most `per_interval` lines per key in each `interval_s` (windows start at a key's
    first line after the last window ended)."""

    def __init__(self, interval_s: float, per_interval: int = 1, max_keys: int = 1000) -> None:
        self.interval_s = interval_s
        self.per_interval = per_interval
        self.max_keys = max_keys
        self._windows: dict[str, _Window] = {}

    def __len__(self) -> int:
        return len(self._windows)

    def admit(self, key: str, now: float) -> int | None:
        """None: leave this line out. Else how many lines of `key` were left out before it
        (since the last one admitted)."""
        window = self._windows.get(key)
        if window is None:
            key = self._room_for(key, now)
            window = self._windows.setdefault(key, _Window(now))
        if now - window.started >= self.interval_s:
            window.started, window.admitted = now, 0
        if window.admitted >= self.per_interval:
            window.left_out += 1
            return None
        window.admitted += 1
        left_out, window.left_out = window.left_out, 0
        return left_out

    def _room_for(self, key: str, now: float) -> str:
        """`key`, once there is room for it; `OTHERS` when every tracked key is still busy.

        Windows that ended with nothing left out are forgotten first (wrappers can name any
        URL, so the keys are not bounded by the configuration)."""
        if len(self._windows) < self.max_keys:
            return key
        for old in [
            name
            for name, window in self._windows.items()
            if now - window.started >= self.interval_s and not window.left_out
        ]:
            del self._windows[old]
        return key if len(self._windows) < self.max_keys else OTHERS
